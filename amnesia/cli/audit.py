"""Proof: `amnesia audit` (the re-hashed chain), `attack` (on a registered version), `evidence`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from amnesia.cli.base import cli, client_settings


@cli.command("audit")
@click.argument("name")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="The whole chain as JSON.")
@click.option("--html", "html_out", type=click.Path(path_type=Path), help="Also write an HTML page here.")
def audit_cmd(name: str, version: str, as_json: bool, html_out: Path | None) -> None:
    """Rebuild a model version's chain and re-hash every artifact it names; exit 1 if anything fails."""
    from amnesia.governance.audit import audit, to_html
    from amnesia.storage.artifacts import ArtifactStore

    settings = client_settings()
    result = audit(settings, ArtifactStore(settings), name, version)
    if html_out:
        html_out.write_text(to_html(result))
    if as_json:
        click.echo(result.model_dump_json(indent=1))
    else:
        click.echo(f"audit {name} v{version} ({result.status}): {'OK' if result.ok else 'FAILED'}")
        for link in result.links:
            click.echo(f"  {'ok  ' if link.ok else 'FAIL'} {link.step:<18} {link.what}  {link.uri or ''}")
    if not result.ok:
        sys.exit(1)


def _bit_widths(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r}: comma-separated whole numbers, e.g. 4,3", param_hint="--bits") from None


@cli.command("attack")
@click.argument("name")
@click.argument("version")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, path_type=Path),
    help="Run config YAML: its model section, evaluate.attacks and gate ceilings (default: the defaults).",
)
@click.option("--rtt-steps", type=int, help="Relearning steps per fold (an audit: 100-200; the default is CI-sized).")
@click.option("--bits", help="Quantization bit widths, comma-separated (e.g. 4,3).")
@click.option("--nf4", is_flag=True, help="Also NF4 (bitsandbytes' 4-bit format), emulated in torch.")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def attack_cmd(
    name: str, version: str, config_path: Path | None, rtt_steps: int | None, bits: str | None, nf4: bool,
    root: str | None,
) -> None:  # fmt: skip
    """Attack a registered version (quantization, relearning) against its base model, now; the results join
    its lineage and its audit. Exit status 3 when a worst recovery crosses its ceiling."""
    import logging

    from amnesia.core.config import ModelConfig, load_yaml, parse_model
    from amnesia.governance.reattack import attack_version
    from amnesia.science.attack_config import AttackConfig
    from amnesia.stages.evaluate.config import EvaluateConfig
    from amnesia.stages.gate.config import GateConfig
    from amnesia.storage.artifacts import ArtifactStore

    raw = load_yaml(config_path) if config_path else {}
    where = f"{config_path}: " if config_path else ""
    evaluate = parse_model(EvaluateConfig, raw.get("evaluate", {}), f"{where}evaluate")
    gate = parse_model(GateConfig, raw.get("gate", {}), f"{where}gate")
    model = parse_model(ModelConfig, raw.get("model", {}), f"{where}model")
    attacks = (evaluate.attacks or AttackConfig()).model_dump()
    if rtt_steps is not None:
        attacks["relearning"] = (attacks["relearning"] or {}) | {"steps": rtt_steps}
    if bits is not None:
        attacks["quantization"] = (attacks["quantization"] or {}) | {"bits": _bit_widths(bits)}
    if nf4:
        attacks["quantization"] = (attacks["quantization"] or {}) | {"nf4": True}
    cfg = parse_model(AttackConfig, attacks, "attacks")
    settings = client_settings()
    store_root = root or f"s3://{settings.bucket}"
    log = logging.getLogger("amnesia")
    result = attack_version(
        settings, ArtifactStore(settings), store_root, name, version, cfg, model, evaluate, gate, log
    )
    click.echo(f"attack {name} v{version}: stored at {result.uri} ({result.digest[:16]})")
    for key, value in sorted(result.recoveries.items()):
        click.echo(f"  {key:<44} {value:.3f}")
    for check in result.checks:
        click.echo(f"  {'ok  ' if check.passed else 'FAIL'} {check.reason()}")
    if not all(c.passed for c in result.checks):
        sys.exit(3)




@cli.command("evidence")
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True, help="The evidence as JSON.")
@click.option("--html", "html_out", type=click.Path(path_type=Path), help="Also write one self-contained page here.")
@click.option("--show-subject", is_flag=True, help="Name the data subject (personal data: off by default).")
@click.option("--root", help="Store root (default s3://<AMNESIA_BUCKET>).")
def evidence_cmd(request_id: str, as_json: bool, html_out: Path | None, show_subject: bool, root: str | None) -> None:
    """What was done about one erasure request: deadlines, runs, this person's figures, approval, purge."""
    from amnesia.governance.evidence import evidence, lines, to_html
    from amnesia.storage.artifacts import ArtifactStore

    settings = client_settings()
    found = evidence(settings, ArtifactStore(settings), root or f"s3://{settings.bucket}", request_id, show_subject)
    if html_out is not None:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(to_html(found))
    if as_json:
        click.echo(found.model_dump_json(indent=1))
    else:
        for line in lines(found):
            click.echo(line)
        if html_out is not None:
            click.echo(f"page    {html_out}")


