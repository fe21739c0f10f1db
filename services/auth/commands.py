"""`medgraph apikey create|list|revoke`: API keys for the REST API and the dashboard."""

from __future__ import annotations

import click

from services.auth.api_keys import SCOPES, UnknownApiKey, create_api_key, list_api_keys
from services.auth.api_keys import revoke_api_key as revoke_stored_key
from services.graph.store import GraphStore


@click.group("apikey")
def apikey() -> None:
    """Manage API keys (stored hashed; a token is shown once, when it is created)."""


@apikey.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option(
    "--scope", "scope", type=click.Choice(SCOPES), default="read", show_default=True,
    help="read: searches and lookups; write: also ingest and clustering jobs.",
)  # fmt: skip
def create(name: str, scope: str) -> None:
    scopes = ("read", "write") if scope == "write" else ("read",)
    issued = create_api_key(GraphStore.from_settings(), name, scopes)  # type: ignore[arg-type]
    click.echo(f"id:     {issued.key.id}")
    click.echo(f"scopes: {', '.join(issued.key.scopes)}")
    click.secho(f"token:  {issued.token}", fg="yellow")
    click.echo("The token is shown only now; send it as 'Authorization: Bearer <token>'.")


@apikey.command("list")
def list_keys() -> None:
    for key in list_api_keys(GraphStore.from_settings()):
        state = "revoked" if key["revoked"] else "active"
        click.echo(f"{key['id']}  {state:7}  {','.join(key['scopes']):10}  {key['name']}  "
                   f"{key['created_at']}")  # fmt: skip


@apikey.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    try:
        revoke_stored_key(GraphStore.from_settings(), key_id)
    except UnknownApiKey as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"revoked {key_id}")
