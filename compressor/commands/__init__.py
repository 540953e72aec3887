"""One library function per command (compress, check, bench): orchestration only."""
