"""Screenshots of the running dashboard in headless Chromium (Debian's, never a downloaded one).

    .venv/bin/python -m services.dashboard.screenshot --url http://127.0.0.1:5000/dashboard/ \\
        --out docs/dashboard.png

Without ``--key`` the first image of the largest community is the focus. Needs the dev extra
(``playwright``) and ``/usr/bin/chromium`` (installed by ``scripts/setup``).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP_VIEWPORT = {"width": 1366, "height": 900}
LARGE_VIEWPORT = {"width": 2560, "height": 1440}
READY_TIMEOUT_MS = 90_000


@contextmanager
def launch_chromium(executable: str = CHROMIUM_PATH) -> Iterator[Any]:
    """A Playwright Browser on the system Chromium (``playwright install`` is never needed)."""
    from playwright.sync_api import sync_playwright

    if not Path(executable).exists():
        raise click.ClickException(
            f"no Chromium at {executable}: install Debian's 'chromium' (scripts/setup does)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def wait_for_view(page: Any, timeout_ms: int = READY_TIMEOUT_MS) -> str:
    """Waits until the view of the current address has finished loading; returns its status.

    The status only counts once the router has taken the current address: just after a click on a
    link the hash has changed but hashchange has not run yet, and the old view still says ready.
    """
    page.wait_for_function(
        "() => { const view = document.getElementById('view');"
        " return view.dataset.route === window.location.hash"
        " && ['ready', 'error', 'idle'].includes(view.dataset.status); }",
        timeout=timeout_ms,
    )
    return str(page.evaluate("document.getElementById('view').dataset.status"))


def wait_for_thumbnails(page: Any, timeout_ms: int = READY_TIMEOUT_MS) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.thumb')]"
        ".every(img => img.dataset.state !== 'loading')",
        timeout=timeout_ms,
    )


def wait_for_graph(page: Any, timeout_ms: int = READY_TIMEOUT_MS) -> None:
    """The neighbourhood graph is drawn and every node has its thumbnail."""
    wait_for_view(page, timeout_ms)
    page.wait_for_function(
        "() => window.medgraphCy && window.medgraphCy.nodes().length > 0 && "
        "window.medgraphCy.nodes().every(node => node.data('thumb'))",
        timeout=timeout_ms,
    )
    # One more frame, so the canvas shows the thumbnails that just arrived.
    page.wait_for_timeout(300)


def first_key(base_url: str, api_key: str | None = None) -> str:
    """A member of the largest community, read over the API like the page does."""
    root = base_url.split("/dashboard")[0].rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def get(path: str) -> Any:
        request = urllib.request.Request(root + path, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    communities = get("/api/v1/communities")["communities"]
    if not communities:
        raise click.ClickException("the graph has no communities yet: ingest and cluster first")
    largest = max(communities, key=lambda community: community.get("size") or 0)
    members = get(f"/api/v1/communities/{largest['id']}")["members"]
    return str(members[0]["key"])


def capture(
    browser: Any,
    base_url: str,
    out_dir: Path,
    key: str,
    *,
    api_key: str | None = None,
    viewport: dict[str, int] = LAPTOP_VIEWPORT,
    k: int = 12,
) -> dict[str, Path]:
    """Screenshots of search, graph, communities and image detail for ``key``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=viewport)
    if api_key:
        context.add_init_script(f"sessionStorage.setItem('medgraph.apiKey', {json.dumps(api_key)})")
    page = context.new_page()
    shots: dict[str, Path] = {}
    views = {
        "search": f"#/search?key={key}&k={k}&strategy=region",
        "graph": f"#/graph?key={key}&hops=2&min_weight=0.00",
        "communities": "#/communities",
        "image": f"#/image/{key}",
    }
    try:
        for name, fragment in views.items():
            page.goto(base_url + fragment)
            if name == "graph":
                wait_for_graph(page)
            else:
                wait_for_view(page)
                wait_for_thumbnails(page)
            path = out_dir / f"dashboard-{name}-{viewport['width']}.png"
            page.screenshot(path=str(path), full_page=name != "graph")
            shots[name] = path
    finally:
        context.close()
    return shots


@click.command()
@click.option("--url", "base_url", default="http://127.0.0.1:5000/dashboard/", show_default=True)
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path),
    default=Path("docs/dashboard.png"),
    show_default=True,
    help="The README screenshot (the graph view).",
)
@click.option("--key", default=None, help="Focus image (default: one of the largest community).")
@click.option("--api-key", default=None, envvar="MEDGRAPH_DASHBOARD_API_KEY")
@click.option(
    "--all-views",
    type=click.Path(path_type=Path),
    default=None,
    help="Also save every view at 1366 and 2560 px into this folder.",
)
def main(
    base_url: str, out_file: Path, key: str | None, api_key: str | None, all_views: Path | None
) -> None:
    """Save the README screenshot of the running dashboard."""
    key = key or first_key(base_url, api_key)
    with launch_chromium() as browser:
        context = browser.new_context(viewport={"width": 1600, "height": 900})
        if api_key:
            context.add_init_script(
                f"sessionStorage.setItem('medgraph.apiKey', {json.dumps(api_key)})"
            )
        page = context.new_page()
        page.goto(f"{base_url}#/graph?key={key}&hops=2&min_weight=0.00")
        wait_for_graph(page)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out_file))
        context.close()
        click.echo(f"saved {out_file}")
        if all_views:
            for viewport in (LAPTOP_VIEWPORT, LARGE_VIEWPORT):
                for path in capture(
                    browser, base_url, all_views, key, api_key=api_key, viewport=viewport
                ).values():
                    click.echo(f"saved {path}")


if __name__ == "__main__":
    main()
