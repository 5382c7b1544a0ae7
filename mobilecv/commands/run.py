"""`mobilecv run`: a recipe, end to end."""

from __future__ import annotations

import click

from mobilecv.cliutil import echo_json, handle_errors, json_option, out_dir_option


@click.command("run")
@click.argument("recipe_name")
@out_dir_option("Output folder (default: runs/RECIPE_NAME).", required=False)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a recipe value, e.g. --set train.epochs=2 (repeatable).",
)
@click.option(
    "--dry-run", is_flag=True, help="Validate and show the plan; build and train nothing."
)
@json_option("the summary")
@handle_errors
def run_command(recipe_name, out_dir, overrides, dry_run, as_json) -> None:
    """Run RECIPE (a shipped recipe name or a YAML path): build, train, compress,
    convert, evaluate, benchmark and write report.md. Resumable: unchanged steps are
    not redone."""
    from mobilecv import recipe as recipes
    from mobilecv.runner import run

    loaded = recipes.load(recipe_name, overrides)
    summary = run(loaded, out_dir or f"runs/{loaded.name}", dry_run=dry_run, progress=not as_json)
    if as_json:
        echo_json(summary)
    elif dry_run:
        click.echo(f"recipe {summary['recipe']} -> {summary['out']}")
        for step in summary["steps"]:
            state = "runs" if step["runs"] else "skipped (not configured)"
            click.echo(f"  {step['step']:<9} {state}")
        click.echo(recipes.dump(loaded).rstrip())
    elif not summary["chief"]:
        did = "trained with the cluster" if "train" in summary["ran"] else "nothing to train"
        click.echo(f"{summary['task']}: {did}; the chief writes the artefacts")
    else:
        ran = ", ".join(summary["ran"]) or "nothing"
        skipped = ", ".join(summary["skipped"]) or "nothing"
        click.echo(f"ran: {ran}; up to date: {skipped}; report: {summary['report']}")
