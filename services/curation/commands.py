"""`medgraph delete`, `medgraph relabel` and `medgraph audit`."""

from __future__ import annotations

import json
import sys

import click

from services.config import get_settings
from services.curation.audit import AUDIT_ACTIONS, CLI_ACTOR, list_audit
from services.curation.deletion import (
    DeletionRefused,
    DeletionReport,
    delete_images,
    delete_patient,
    finish_file_deletions,
)
from services.curation.relabel import FindingsError, relabel_image
from services.graph.store import GraphStore
from services.privacy import original_name_key
from services.retrieval.contract import NO_FINDING, UnknownImage
from services.secrets import audit_salt, patient_key_secret


def _report_dict(report: DeletionReport) -> dict[str, object]:
    return {
        "deleted": [{"key": key, "file": report.files.get(key, "none")} for key in report.deleted],
        "missing": report.missing,
        "images": len(report.deleted),
        "edges_removed": report.edges_removed,
        "edges_added": report.edges_added,
        "relinked": report.relinked,
        "communities_updated": report.communities_updated,
        "communities_removed": report.communities_removed,
        "files": report.files_note(),
        "audit_id": report.audit_id,
        "seconds": round(report.seconds, 3),
    }


@click.command("delete")
@click.argument("keys", nargs=-1)
@click.option(
    "--patient-id", default=None, metavar="ID",
    help="Delete every image of this patient (raw id; only its HMAC is used). '-' reads it "
    "from standard input, so it stays out of the process list and the shell history.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def delete(keys: tuple[str, ...], patient_id: str | None, as_json: bool) -> None:
    """Delete images by KEY (and/or a whole patient) in one transaction, keeping the kNN graph,
    the community sums and the search caches exact. Exit status: 0 all deleted, 3 some keys not
    stored, 1 nothing deleted."""
    if not keys and patient_id is None:
        raise click.UsageError("give image keys, or --patient-id")
    settings = get_settings()
    store = GraphStore.from_settings(settings)
    salt = audit_salt(settings)
    if patient_id == "-":
        patient_id = sys.stdin.readline().rstrip("\r\n")
    try:
        if patient_id is not None:
            if not patient_id.strip():
                raise click.UsageError("the patient id is empty")
            report = delete_patient(store, settings, patient_id, actor=CLI_ACTOR, salt=salt)
            if keys:
                more = delete_images(store, settings, keys, actor=CLI_ACTOR, salt=salt)
                report.deleted += more.deleted
                report.missing += more.missing
                report.files.update(more.files)
        else:
            report = delete_images(store, settings, keys, actor=CLI_ACTOR, salt=salt)
    except DeletionRefused as problem:
        raise click.ClickException(str(problem)) from None
    if as_json:
        click.echo(json.dumps(_report_dict(report), indent=2))
    else:
        for key in report.deleted:
            click.echo(f"deleted {key}  (file: {report.files.get(key, 'none')})")
        for key in report.missing:
            click.secho(f"not stored: {key}", fg="yellow", err=True)
        if patient_id is not None and not report.deleted:
            click.secho("no stored image belongs to that patient", fg="yellow", err=True)
        if report.deleted:
            click.echo(
                f"{len(report.deleted)} image(s) deleted in {report.seconds:.2f} s: "
                f"{report.edges_removed} SIMILAR pairs removed, {report.edges_added} added to "
                f"re-link {report.relinked} neighbour(s); communities updated "
                f"{report.communities_updated or '-'}, removed {report.communities_removed or '-'}"
            )
            click.echo(f"files: {report.files_note()}")
            click.echo(f"audit record: {report.audit_id}")
    if not report.deleted:
        sys.exit(1)
    if report.missing:
        sys.exit(3)


@click.command("relabel")
@click.argument("key")
@click.option("--finding", "findings", multiple=True, help="A positive finding (repeatable).")
@click.option("--no-finding", is_flag=True, help=f"No positive finding ({NO_FINDING}).")
@click.option("--clear", is_flag=True, help="Remove the labels: the image becomes unlabelled.")
def relabel(key: str, findings: tuple[str, ...], no_finding: bool, clear: bool) -> None:
    """Correct an image's findings (its community's finding histogram follows; edges and
    communities do not change). Findings come from the checkpoint's vocabulary."""
    if bool(findings) + no_finding + clear != 1:
        raise click.UsageError("give --finding NAME (repeatable), --no-finding or --clear")
    settings = get_settings()
    wanted = None if clear else [] if no_finding else list(findings)
    try:
        report = relabel_image(
            GraphStore.from_settings(settings), key, wanted,
            actor=CLI_ACTOR, salt=audit_salt(settings),
        )  # fmt: skip
    except FindingsError as problem:
        raise click.UsageError(f"invalid findings: {problem}") from None
    except UnknownImage:
        raise click.ClickException(f"no stored image has the key {key!r}") from None
    before = "unlabelled" if report.before is None else (", ".join(report.before) or NO_FINDING)
    after = "unlabelled" if report.after is None else (", ".join(report.after) or NO_FINDING)
    if not report.changed:
        click.echo(f"{key}: already {after}; nothing changed")
        return
    click.echo(f"{key}: {before} -> {after} (community {report.community}); "
               f"audit record {report.audit_id}")  # fmt: skip


@click.command("audit")
@click.option("--action", type=click.Choice(AUDIT_ACTIONS), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def audit(action: str | None, limit: int, as_json: bool) -> None:
    """List the audit records of deletions and relabels, newest first (no key, patient or file
    name in them: salted key hashes only). Also finishes file removals a crash left pending."""
    settings = get_settings()
    store = GraphStore.from_settings(settings)
    finish_file_deletions(store, settings)
    page = list_audit(store, action=action, limit=limit)
    if as_json:
        click.echo(json.dumps({"total": page.total, "records": page.records}, indent=2))
        return
    click.echo(f"{page.total} record(s)")
    for record in page.records:
        click.echo(f"{record['at']}  {record['id']}  {record['action']:8} {record['images']:>5} "
                   f"image(s)  by {record['actor']}")  # fmt: skip


@click.command("find-name")
@click.argument("name")
def find_name(name: str) -> None:
    """The keys of the images ingested from a file of this base name. Works for images ingested
    with MEDGRAPH_KEEP_ORIGINAL_NAME_KEYS=true: the graph keeps only an HMAC of each name."""
    settings = get_settings()
    wanted = original_name_key(patient_key_secret(settings), name)
    keys = [row["key"] for row in GraphStore.from_settings(settings).query(
        "image_by_name_key", name_key=wanted)]  # fmt: skip
    if not keys:
        hint = "" if settings.keep_original_name_keys else " (keep_original_name_keys is off)"
        raise click.ClickException(f"no image is stored under that file name{hint}")
    click.echo("\n".join(keys))
