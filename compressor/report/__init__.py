"""What the commands print and write: reports, budget tables, benchmark tables."""
