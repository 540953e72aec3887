"""`--help` in sections: the options most users need, one line each under a heading, and the
expert options by name only (`--help-all` shows them in full). A default is shown in brackets
after the help."""

from __future__ import annotations

import click

EXPERT = "Expert"


class SectionedCommand(click.Command):
    """A command whose help lists its options under headings.

    Args:
        sections: (heading, option names) in the order shown; an option in no section is
            listed under `EXPERT` by name (in full with `--help-all`).
    """

    def __init__(self, *args, sections: list[tuple[str, list[str]]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sections = sections
        self.params.append(click.Option(
            ["--help-all"], is_flag=True, expose_value=False, is_eager=True,
            callback=self._help_all, help="Show every option, the expert ones too."))

    def _help_all(self, ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            ctx.meta["help_all"] = True
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit()

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        params = {p.name: p for p in self.get_params(ctx) if isinstance(p, click.Option)}
        placed = {name for _, names in self.sections for name in names}
        for heading, names in self.sections:
            with formatter.section(heading):
                formatter.write_dl([_record(params[n]) for n in names if n in params])
        expert = [p for name, p in params.items() if name not in placed and not p.hidden]
        if ctx.meta.get("help_all"):
            with formatter.section(EXPERT):
                formatter.write_dl([_record(p) for p in expert])
        else:
            with formatter.section(f"{EXPERT} (--help-all describes them; docs/cli.md every "
                                   "option)"):
                formatter.write_text(" ".join(p.opts[-1] if len(p.opts[-1]) > 2 else p.opts[0]
                                              for p in expert))


def _record(option: click.Option) -> tuple[str, str]:
    """The option's help row: its flags and metavar, its help and its default."""
    names = ", ".join(option.opts)
    if not option.is_flag:
        metavar = option.metavar or ("|".join(option.type.choices)
                                     if isinstance(option.type, click.Choice) else "N")
        names += f" {metavar}"
    text = option.help or ""
    if option.required:
        text += " [required]"
    elif option.show_default and option.default not in (None, False):
        text += f" [{option.default}]"
    return names, text
