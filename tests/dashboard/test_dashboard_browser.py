"""The dashboard in real headless Chromium, against the real app and a real Neo4j graph."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from services.api import create_app
from services.config import Settings
from services.dashboard.screenshot import (
    LARGE_VIEWPORT,
    wait_for_graph,
    wait_for_thumbnails,
    wait_for_view,
)
from tests.dashboard.conftest import SeededGraph, Timings

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]

K = 8


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def http_get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class AssetCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and values.get("src"):
            self.assets.append(values["src"] or "")
        if tag == "link" and values.get("href") and not (values["href"] or "").startswith("data:"):
            self.assets.append(values["href"] or "")


def test_page_and_every_asset_are_served_by_the_app_without_a_key(dashboard_url: str) -> None:
    status, body = http_get(dashboard_url)
    assert status == 200
    collector = AssetCollector()
    collector.feed(body.decode())
    assert any("cytoscape.min.js" in asset for asset in collector.assets)
    modules: list[str] = []
    for asset in collector.assets:
        assert not re.match(r"^(https?:)?//", asset), f"asset from elsewhere: {asset}"
        status, content = http_get(origin_of(dashboard_url) + asset)
        assert status == 200, asset
        if asset.endswith("app.js"):
            modules.append(content.decode())
    # The modules import only relative paths: nothing leaves the app.
    static_js = origin_of(dashboard_url) + "/dashboard/static/js/"
    for name in (
        "api.js",
        "dom.js",
        "chart.js",
        "router.js",
        "views/search.js",
        "views/graph.js",
        "views/communities.js",
        "views/image.js",
    ):
        status, content = http_get(static_js + name)
        assert status == 200, name
        modules.append(content.decode())
    for source in modules:
        for imported in re.findall(r"from '([^']+)'", source):
            assert imported.startswith("."), imported
    status, licence = http_get(
        origin_of(dashboard_url) + "/dashboard/static/vendor/cytoscape/LICENSE"
    )
    assert status == 200 and b"Permission is hereby granted" in licence
    status, _ = http_get(origin_of(dashboard_url) + "/")
    assert status == 200  # redirected to the dashboard


def test_without_a_key_a_view_shows_the_api_s_401_and_asks_for_a_key(
    page: Any, dashboard_url: str, seeded_graph: SeededGraph
) -> None:
    page.goto(f"{dashboard_url}#/search?key={seeded_graph.images[0].key}&k={K}")
    assert wait_for_view(page) == "error"
    error_text = page.inner_text("#results-area")
    assert "401" in error_text and "API key" in error_text
    assert page.locator("#results-area .state-error button").count() == 1  # retry
    # The query's own details say the same, and no thumbnail was served without a key.
    assert "401" in page.inner_text("#query")
    assert page.locator("img.thumb[data-state=loaded]").count() == 0


def test_a_search_by_key_with_the_typed_api_key_shows_k_cards(
    page: Any,
    dashboard_url: str,
    seeded_graph: SeededGraph,
    read_token: str,
    artifacts_dir: Path,
) -> None:
    query = seeded_graph.images[0]
    page.goto(f"{dashboard_url}#/search?key={query.key}&k={K}&strategy=region")
    assert wait_for_view(page) == "error"  # the API wants a key

    sent_headers: list[str] = []
    page.on(
        "request",
        lambda request: (
            "/api/v1/" in request.url
            and sent_headers.append(request.headers.get("authorization", ""))
        ),
    )
    page.fill("#api-key-input", read_token)
    page.click("#api-key-form button[type=submit]")
    page.wait_for_function(
        "() => document.getElementById('view').dataset.status === 'ready' && "
        "document.querySelectorAll('[data-testid=result-card]').length > 0"
    )
    wait_for_thumbnails(page)
    assert page.evaluate("sessionStorage.getItem('medgraph.apiKey')") == read_token
    assert sent_headers and all(header == f"Bearer {read_token}" for header in sent_headers)

    cards = page.locator("[data-testid=result-card]")
    assert cards.count() == K
    ranks = [int(cards.nth(i).get_attribute("data-rank")) for i in range(K)]
    assert ranks == list(range(1, K + 1))
    result_keys = [cards.nth(i).get_attribute("data-key") for i in range(K)]
    assert query.key not in result_keys
    community_of = {image.key: image.community for image in seeded_graph.images}
    findings_of = {image.key: image.findings for image in seeded_graph.images}
    first = cards.nth(0)
    assert f"C{community_of[result_keys[0]]}" in first.inner_text()
    assert re.search(r"cos -?\d\.\d{3}", first.inner_text())
    for finding in findings_of[result_keys[0]] or ("No Finding",):
        assert finding in first.inner_text()
    # The query's own findings, beside the results.
    query_text = page.inner_text("#query")
    for finding in query.findings or ("No Finding",):
        assert finding in query_text
    # Every thumbnail arrived (fetched with the key).
    assert page.locator("#results img.thumb[data-state=loaded]").count() == K
    page.screenshot(path=str(artifacts_dir / "dashboard-search.png"), full_page=True)
    assert unexpected_console_errors(page) == []


def test_a_key_in_the_demo_address_is_kept_for_the_tab_and_removed_from_the_address(
    page: Any, dashboard_url: str, read_token: str
) -> None:
    page.goto(f"{dashboard_url}#key={read_token}")
    wait_for_view(page)
    assert page.evaluate("sessionStorage.getItem('medgraph.apiKey')") == read_token
    assert read_token not in page.url
    assert page.evaluate("window.location.hash") == "#/search"
    assert page.input_value("#api-key-input") == read_token


def test_the_search_form_puts_its_state_in_the_url(
    keyed_page: Any, dashboard_url: str, seeded_graph: SeededGraph, timings: Timings
) -> None:
    page = keyed_page
    query = seeded_graph.images[3]
    page.goto(f"{dashboard_url}#/search")
    wait_for_view(page)
    page.fill("#search-key", query.key)
    page.fill("#search-k", "5")
    page.select_option("#search-strategy", "exact")
    with timings.measure("search exact k=5, submit to cards and thumbnails"):
        page.click("#search-submit")
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=result-card]').length"
        )
        wait_for_thumbnails(page)
    assert page.locator("[data-testid=result-card]").count() == 5
    fragment = page.evaluate("window.location.hash")
    assert f"key={query.key}" in fragment and "k=5" in fragment and "strategy=exact" in fragment
    # The same URL in a new tab shows the same results.
    other = page.context.new_page()
    other.goto(f"{dashboard_url}{fragment}")
    wait_for_view(other)
    keys_here = page.locator("[data-testid=result-card]").evaluate_all(
        "cards => cards.map(card => card.dataset.key)"
    )
    keys_there = other.locator("[data-testid=result-card]").evaluate_all(
        "cards => cards.map(card => card.dataset.key)"
    )
    assert keys_here == keys_there
    assert other.input_value("#search-strategy") == "exact"


def test_the_order_control_re_ranks_by_predicted_findings(
    keyed_page: Any, dashboard_url: str, seeded_graph: SeededGraph
) -> None:
    page = keyed_page
    query = seeded_graph.images[5]
    page.goto(f"{dashboard_url}#/search?key={query.key}&k=8&strategy=exact")
    wait_for_view(page)
    page.select_option("#search-order", "findings")
    page.click("#search-submit")
    page.wait_for_function(
        "() => document.getElementById('view').dataset.status === 'ready' && "
        "document.querySelectorAll('[data-testid=result-card] .agreement').length === 8"
    )
    fragment = page.evaluate("window.location.hash")
    assert "rerank=findings" in fragment
    assert "re-ranked by predicted findings (first 64)" in page.inner_text("#results-area")
    cards = page.locator("[data-testid=result-card]")
    agreements = [
        float(cards.nth(i).locator(".agreement").inner_text().split()[-1]) for i in range(8)
    ]
    assert agreements == sorted(agreements, reverse=True)
    reranked = cards.evaluate_all("cards => cards.map(card => card.dataset.key)")
    # Back to the strategy's own order: no agreement shown, and another order of images.
    page.select_option("#search-order", "none")
    page.click("#search-submit")
    page.wait_for_function(
        "() => document.getElementById('view').dataset.status === 'ready' && "
        "!window.location.hash.includes('rerank') && "
        "document.querySelectorAll('[data-testid=result-card]').length === 8 && "
        "document.querySelectorAll('[data-testid=result-card] .agreement').length === 0"
    )
    plain = cards.evaluate_all("cards => cards.map(card => card.dataset.key)")
    assert plain != reranked
    other = page.context.new_page()
    other.goto(f"{dashboard_url}{fragment}")
    wait_for_view(other)
    assert other.input_value("#search-order") == "findings"
    assert unexpected_console_errors(page) == []


def unexpected_console_errors(page: Any) -> list[str]:
    # Chromium logs every non-2xx response ("Failed to load resource"); the 401s are expected.
    return [text for text in page.console_errors if "Failed to load resource" not in text]


def graph_state(page: Any) -> dict[str, Any]:
    return page.evaluate(
        """() => ({
            focus: document.getElementById('view').dataset.focus,
            nodes: window.medgraphCy.nodes().map(node => ({
                key: node.id(), community: node.data('community'),
                colour: node.style('border-color'), thumb: Boolean(node.data('thumb')),
                focus: node.hasClass('focus'),
            })),
            edges: window.medgraphCy.edges().map(edge => ({
                source: edge.source().id(), target: edge.target().id(),
                weight: edge.data('weight'), width: parseFloat(edge.style('width')),
            })),
        })"""
    )


def click_node(page: Any, key: str) -> None:
    x, y = page.evaluate(
        """(key) => {
            const node = window.medgraphCy.getElementById(key);
            const box = window.medgraphCy.container().getBoundingClientRect();
            const position = node.renderedPosition();
            return [box.left + position.x, box.top + position.y];
        }""",
        key,
    )
    page.mouse.click(x, y)


def ball(seeded_graph: SeededGraph, key: str, hops: int, min_weight: float) -> set[str]:
    reached = {key}
    frontier = {key}
    for _ in range(hops):
        frontier = {
            other for node in frontier for other in seeded_graph.neighbours(node, min_weight)
        } - reached
        reached |= frontier
    return reached


def test_neighbourhood_graph_shows_thumbnails_community_colours_and_refocuses_on_click(
    keyed_page: Any,
    dashboard_url: str,
    seeded_graph: SeededGraph,
    artifacts_dir: Path,
    timings: Timings,
) -> None:
    page = keyed_page
    focus = seeded_graph.images[0].key
    with timings.measure("graph 1 hop, page load to every thumbnail drawn"):
        page.goto(f"{dashboard_url}#/graph?key={focus}&hops=1&min_weight=0.00")
        wait_for_graph(page)
    state = graph_state(page)
    expected = ball(seeded_graph, focus, 1, 0.0)
    assert state["focus"] == focus
    assert {node["key"] for node in state["nodes"]} == expected
    assert len(state["nodes"]) == len(expected) > 1
    assert [node["key"] for node in state["nodes"] if node["focus"]] == [focus]
    community_of = {image.key: image.community for image in seeded_graph.images}
    colour_of_community: dict[int, str] = {}
    for node in state["nodes"]:
        assert node["thumb"], f"node {node['key']} has no thumbnail"
        assert node["community"] == community_of[node["key"]]
        # One colour per community, different communities told apart.
        assert colour_of_community.setdefault(node["community"], node["colour"]) == node["colour"]
    assert len(set(colour_of_community.values())) == len(colour_of_community)
    by_weight = sorted(state["edges"], key=lambda edge: edge["weight"])
    assert [edge["width"] for edge in by_weight] == sorted(edge["width"] for edge in by_weight)
    if by_weight[0]["weight"] < by_weight[-1]["weight"]:
        assert by_weight[0]["width"] < by_weight[-1]["width"]
    page.screenshot(path=str(artifacts_dir / "dashboard-graph.png"))

    neighbour = sorted(expected - {focus})[0]
    with timings.measure("graph 1 hop, click on a neighbour to refocused graph"):
        click_node(page, neighbour)
        page.wait_for_function(
            "(key) => document.getElementById('view').dataset.focus === key", arg=neighbour
        )
        wait_for_graph(page)
    refocused = graph_state(page)
    assert {node["key"] for node in refocused["nodes"]} == ball(seeded_graph, neighbour, 1, 0.0)
    assert f"key={neighbour}" in page.evaluate("window.location.hash")
    assert neighbour in page.inner_text("#graph-side") or neighbour[:12] in page.inner_text(
        "#graph-side"
    )
    page.go_back()  # the previous focus is one step back in history
    page.wait_for_function(
        "(key) => document.getElementById('view').dataset.focus === key", arg=focus
    )


def set_slider(page: Any, selector: str, value: float) -> None:
    page.eval_on_selector(
        selector,
        "(input, value) => { input.value = value; "
        "input.dispatchEvent(new Event('input', {bubbles: true})); }",
        value,
    )


def test_graph_sliders_set_hops_and_minimum_similarity(
    keyed_page: Any, dashboard_url: str, seeded_graph: SeededGraph, timings: Timings
) -> None:
    page = keyed_page
    focus = seeded_graph.images[1].key
    page.goto(f"{dashboard_url}#/graph?key={focus}&hops=1&min_weight=0.00")
    wait_for_graph(page)
    with timings.measure("graph hops slider 1 -> 2, including the 250 ms settle delay"):
        set_slider(page, "#graph-hops", 2)
        page.wait_for_function("() => window.location.hash.includes('hops=2')")
        wait_for_graph(page)
    timings.figures["graph 2 hops, nodes"] = page.evaluate("window.medgraphCy.nodes().length")
    assert {n["key"] for n in graph_state(page)["nodes"]} == ball(seeded_graph, focus, 2, 0.0)

    weights = sorted(w for a, b, w in seeded_graph.edges if focus in (a, b))
    threshold = round((weights[0] + weights[-1]) / 2, 2)
    set_slider(page, "#graph-min-weight", threshold)
    page.wait_for_function(
        "(t) => window.location.hash.includes('min_weight=' + t)", arg=f"{threshold:.2f}"
    )
    wait_for_graph(page)
    state = graph_state(page)
    assert {n["key"] for n in state["nodes"]} == ball(seeded_graph, focus, 2, threshold)
    assert all(edge["weight"] >= threshold - 1e-9 for edge in state["edges"])


def test_community_browser_lists_every_community_with_a_chart(
    keyed_page: Any,
    dashboard_url: str,
    seeded_graph: SeededGraph,
    artifacts_dir: Path,
    timings: Timings,
) -> None:
    page = keyed_page
    with timings.measure("communities, page load to every chart and sample thumbnail"):
        page.goto(f"{dashboard_url}#/communities")
        assert wait_for_view(page) == "ready"
        wait_for_thumbnails(page)
    cards = page.locator("[data-testid=community-card]")
    shown = {int(c) for c in cards.evaluate_all("cs => cs.map(c => c.dataset.community)")}
    assert shown == seeded_graph.communities
    sizes = seeded_graph.community_sizes()
    for index in range(cards.count()):
        card = cards.nth(index)
        community = int(card.get_attribute("data-community"))
        assert f"{sizes[community]} images" in card.inner_text()
        chart = card.locator("svg.histogram")
        assert chart.count() == 1
        assert int(chart.get_attribute("data-bars")) >= 1
        assert card.locator("svg.histogram rect").count() >= 1
        assert "%" in card.locator(".stats").inner_text()  # purity
        assert card.locator(".samples img.thumb[data-state=loaded]").count() >= 1
    page.screenshot(path=str(artifacts_dir / "dashboard-communities.png"), full_page=True)

    largest = max(sizes, key=lambda c: sizes[c])
    page.click(f"[data-testid=community-card][data-community='{largest}'] .open-link")
    page.wait_for_function(
        "(id) => window.location.hash === '#/communities/' + id", arg=str(largest)
    )
    assert wait_for_view(page) == "ready"
    assert page.locator("#view h1").first.inner_text() == f"Community {largest}"
    members = page.locator("[data-testid=member]")
    member_keys = set(members.evaluate_all("ms => ms.map(m => m.dataset.key)"))
    expected_members = {i.key for i in seeded_graph.images if i.community == largest}
    assert member_keys <= expected_members
    assert len(member_keys) == min(len(expected_members), 50)
    # Links to other communities, or a note that this API does not offer them.
    assert page.locator("#community-links, #community-links-unavailable").count() == 1
    page.screenshot(path=str(artifacts_dir / "dashboard-community.png"), full_page=True)


def test_a_community_lists_its_links_to_other_communities(
    keyed_page: Any, dashboard_url: str, seeded_graph: SeededGraph
) -> None:
    page = keyed_page
    sizes = seeded_graph.community_sizes()
    largest = max(sizes, key=lambda c: sizes[c])
    page.goto(f"{dashboard_url}#/communities/{largest}")
    assert wait_for_view(page) == "ready"
    community_of = {image.key: image.community for image in seeded_graph.images}
    linked = {
        community_of[b] if community_of[a] == largest else community_of[a]
        for a, b, _ in seeded_graph.edges
        if community_of[a] != community_of[b] and largest in (community_of[a], community_of[b])
    }
    assert linked, "the test graph should link its largest community to others"
    links = page.locator("#community-links a.community-chip").evaluate_all(
        "chips => chips.map(chip => chip.textContent)"
    )
    assert set(links) == {f"C{community}" for community in linked}


def test_image_detail_shows_findings_neighbours_and_a_neo4j_browser_link_but_no_patient_ids(
    keyed_page: Any,
    dashboard_url: str,
    seeded_graph: SeededGraph,
    settings: Any,
    artifacts_dir: Path,
) -> None:
    page = keyed_page
    image = next(i for i in seeded_graph.images if i.findings)
    page.goto(f"{dashboard_url}#/image/{image.key}")
    assert wait_for_view(page) == "ready"
    page.wait_for_function(
        "() => document.getElementById('image-neighbours-body').dataset.status === 'ready'"
    )
    wait_for_thumbnails(page)
    text = page.inner_text("#view")
    for finding in image.findings:
        assert finding in text
    assert f"C{image.community}" in text
    neighbours = page.locator("#image-neighbours > li").evaluate_all(
        "items => items.map(item => item.dataset.key)"
    )
    assert set(neighbours) == seeded_graph.neighbours(image.key)
    # Never a patient identifier: not the patient key, not the NIH file name (patient number).
    html = page.content()
    assert image.patient_key and image.patient_key not in html
    assert Path(image.source or "").name not in html
    href = page.get_attribute("#neo4j-browser-link", "href")
    assert href.startswith(f"http://{settings.neo4j_host}:{settings.neo4j_http_port}/browser/?")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)
    assert query["cmd"] == ["edit"]
    cypher = query["arg"][0]
    assert f"key: '{image.key}'" in cypher and ":SIMILAR" in cypher
    assert page.inner_text("#image-cypher") == cypher
    page.screenshot(path=str(artifacts_dir / "dashboard-image.png"), full_page=True)


@pytest.mark.parametrize(
    "viewport", [{"width": 1366, "height": 800}, LARGE_VIEWPORT], ids=["laptop", "large"]
)
def test_views_fit_laptop_and_large_widths(
    chromium: Any,
    dashboard_url: str,
    seeded_graph: SeededGraph,
    read_token: str,
    viewport: dict[str, int],
    artifacts_dir: Path,
) -> None:
    context = chromium.new_context(viewport=viewport)
    context.set_default_timeout(90_000)
    context.add_init_script(f"sessionStorage.setItem('medgraph.apiKey', '{read_token}')")
    page = context.new_page()
    key = seeded_graph.images[0].key
    try:
        for name, fragment in {
            "search": f"#/search?key={key}&k={K}",
            "graph": f"#/graph?key={key}&hops=2&min_weight=0.00",
            "communities": "#/communities",
            "image": f"#/image/{key}",
        }.items():
            page.goto(f"{dashboard_url}{fragment}")
            assert wait_for_view(page) == "ready", name
            if name == "graph":
                wait_for_graph(page)
            # Nothing spills sideways: no horizontal scrolling at this width.
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{name} overflows by {overflow}px at {viewport['width']}px"
            page.screenshot(
                path=str(artifacts_dir / f"dashboard-{name}-{viewport['width']}.png"),
                full_page=name != "graph",
            )
    finally:
        context.close()


def test_unknown_image_shows_an_error_state(keyed_page: Any, dashboard_url: str) -> None:
    page = keyed_page
    page.goto(f"{dashboard_url}#/graph?key={'0' * 64}&hops=1")
    assert wait_for_view(page) == "error"
    assert "404" in page.inner_text("#view")
    page.goto(f"{dashboard_url}#/image/{'0' * 64}")
    assert wait_for_view(page) == "error"
    assert page.locator(".state-error button").count() == 1  # retry


def test_the_page_config_carries_the_servers_default_order(settings: Settings) -> None:
    """The search view's Order starts at the API's default (the search_rerank setting)."""
    for order in ("none", "findings"):
        app = create_app(settings.model_copy(update={"search_rerank": order}))
        body = app.test_client().get("/dashboard/").get_data(as_text=True)
        found = re.search(r'id="medgraph-config">(.*?)</script>', body, re.S)
        assert found is not None
        assert json.loads(found.group(1))["defaultRerank"] == order
