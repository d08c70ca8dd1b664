"""The web dashboard in a real browser (Playwright driving Debian's chromium) against
real nodes: the seed runs the real llama-server on the default model, a second node
joins while the page is open, a fake OpenAI-compatible server is added as an endpoint
from the page.  Every page must render with live data, with no console error and no
request leaving 127.0.0.1."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

from meshllm.serving import ModelFile
from meshllm.testing.browser import LAUNCH_ARGS, find_chromium
from meshllm.testing.cluster import BackendProcess, Cluster, NodeProcess, wait_for

MODEL = "gemma-3-270m-q4_k_m"
COLD = "gemma-spare"  # the same GGUF under another name: cold until the page loads it
SLOW = 300.0  # llama-server loads in seconds here; CI machines are slow and shared
UI_TIMEOUT_MS = 60_000  # what the page must show, it shows within this
PAGES = ("fleet", "models", "endpoints", "requests", "usage", "chat", "keys")

pytestmark = pytest.mark.e2e
expect.set_options(timeout=UI_TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium; skipped where it is not installed, except in CI (``CI`` set),
    where scripts/test.sh installs it and a skip would hide a failure."""
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium: scripts/test.sh installs Debian's as root")
        pytest.skip("no chromium installed (apt install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, default_model: ModelFile
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("dashboard")
    models = root / "seed-models"
    models.mkdir()
    os.link(default_model.path, models / f"{MODEL}.gguf")
    os.link(default_model.path, models / f"{COLD}.gguf")
    with Cluster(root, ["--llama-server", str(llama_server_bin)]) as cluster:
        seed = cluster.add("--model", MODEL, "--models-dir", str(models), name="seed")
        seed.wait_serving(MODEL, SLOW)
        yield cluster


class Watched:
    """A page with what it did wrong: console errors, uncaught exceptions, and requests
    to anywhere but its node (each aborted)."""

    def __init__(self, page: Page, node: NodeProcess) -> None:
        self.page = page
        self.errors: list[str] = []
        self.outside: list[str] = []
        origin = f"http://127.0.0.1:{node.http_port}"

        def route(route: Route, request: Request) -> None:
            if request.url.startswith(origin + "/") or request.url.startswith("data:"):
                route.continue_()
            else:
                self.outside.append(request.url)
                route.abort()

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.errors.append(message.text)

        page.route("**/*", route)
        page.on("console", console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def check(self) -> None:
        assert self.errors == [], self.errors
        assert self.outside == [], self.outside


def open_dashboard(
    browser: Browser, node: NodeProcess, *, scheme: str = "dark", width: int = 1280
) -> Watched:
    context = browser.new_context(
        color_scheme=scheme,  # type: ignore[arg-type]
        viewport={"width": width, "height": 800},
        accept_downloads=True,
    )
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    watched = Watched(page, node)
    token = (node.state_dir / "admin_token").read_text().strip()
    page.goto(f"http://127.0.0.1:{node.http_port}/#token={token}")
    expect(page.get_by_test_id("live-status")).to_have_text("live")
    return watched


@pytest.fixture
def dashboard(browser: Browser, mesh: Cluster) -> Iterator[Watched]:
    watched = open_dashboard(browser, mesh.nodes[0])
    yield watched
    try:
        watched.check()
    finally:
        watched.page.context.close()


def go(page: Page, name: str) -> None:
    page.get_by_test_id(f"nav-{name}").click()
    page.wait_for_url(f"**/#/{name}")


def test_the_token_leaves_the_address_bar_and_every_page_renders(dashboard: Watched) -> None:
    page = dashboard.page
    assert "token=" not in page.url  # kept for the tab, not in history or a screenshot
    for name in PAGES:
        go(page, name)
        expect(page.locator(f"[data-page={name}]:not(a)")).to_be_visible()
        expect(page.get_by_test_id("page-error")).to_have_count(0)


def test_the_fleet_shows_each_node_and_one_that_joins_without_a_reload(
    dashboard: Watched, mesh: Cluster
) -> None:
    page, seed = dashboard.page, mesh.nodes[0]
    go(page, "fleet")
    card = page.locator(f"[data-testid=node-card][data-node-id='{seed.node_id}']")
    expect(card).to_be_visible()
    expect(card.get_by_test_id("node-role")).to_have_text("host")
    cpu = card.get_by_test_id("bar-cpu")
    expect(cpu).to_have_attribute("data-value", re.compile(r"^(unknown|\d+(\.\d+)?)$"))
    expect(page.get_by_test_id("fleet-summary")).not_to_be_empty()
    cards = page.get_by_test_id("node-card")
    expect(cards).to_have_count(len([n for n in mesh.nodes if n.alive()]))

    joined = mesh.add("--client", "--port", "0", name="joiner")
    new = page.locator(f"[data-testid=node-card][data-node-id='{joined.node_id}']")
    expect(new).to_be_visible()  # from node_joined, no reload
    expect(page.locator("[data-testid=topology-node]")).to_have_count(cards.count())


def test_a_model_loaded_from_the_models_page_goes_warming_then_hot(
    dashboard: Watched, mesh: Cluster
) -> None:
    page, seed = dashboard.page, mesh.nodes[0]
    go(page, "models")
    row = page.locator(f"[data-testid=model-row][data-model='{COLD}']")
    chip = row.locator(f"[data-testid=model-node-state][data-node-id='{seed.node_id}']")
    expect(chip).to_have_attribute("data-state", "cold")
    # Every state the chip shows, as the page shows it (live, from the event stream).
    page.evaluate(
        """chip => { window.seenStates = [chip.dataset.state];
            new MutationObserver(() => window.seenStates.push(chip.dataset.state))
              .observe(chip, {attributes: true}); }""",
        chip.element_handle(),
    )
    row.get_by_test_id("model-load").click()
    confirm = page.get_by_test_id("confirm-ok")
    if confirm.is_visible():
        confirm.click()
    # Loaded: hot, or cooling (loaded and idle, its TTL counting down: it still answers).
    loaded = re.compile(r"^(hot|cooling)$")
    expect(chip).to_have_attribute("data-state", loaded, timeout=SLOW * 1000)
    seen: list[str] = page.evaluate("window.seenStates")
    first_loaded = next(i for i, state in enumerate(seen) if loaded.match(state))
    assert "warming" in seen[:first_loaded], seen


def test_an_endpoint_added_on_the_page_appears_mesh_wide(
    dashboard: Watched, mesh: Cluster, tmp_path: Path
) -> None:
    page = dashboard.page
    backend = BackendProcess(tmp_path / "fake.log", ["fake-endpoint-model"]).start()
    try:
        go(page, "endpoints")
        page.get_by_test_id("endpoint-url").fill(backend.url)
        page.get_by_test_id("endpoint-name").fill("fake-box")
        page.get_by_test_id("endpoint-kind").select_option("openai")
        page.get_by_test_id("endpoint-add").click()
        row = page.locator("[data-testid=endpoint-row]", has_text="fake-box")
        expect(row).to_be_visible()
        expect(row).to_contain_text("fake-endpoint-model")
        others = [n for n in mesh.nodes[1:] if n.alive()] or [mesh.add("--client", "--port", "0")]

        def everywhere() -> bool:
            return all(
                any(e.get("name") == "fake-box" for e in n.get("/api/endpoints")["endpoints"])
                for n in others
            )

        wait_for(everywhere, 60, what="the endpoint to be known mesh-wide")
        row.get_by_test_id("endpoint-remove").click()
        page.get_by_test_id("confirm-ok").click()
        expect(row).to_have_count(0)
    finally:
        backend.kill()


def test_the_chat_streams_an_answer_from_llama_server_and_names_its_node(
    dashboard: Watched, mesh: Cluster
) -> None:
    page, seed = dashboard.page, mesh.nodes[0]
    go(page, "chat")
    page.get_by_test_id("chat-model").select_option(MODEL)
    page.get_by_test_id("chat-input").fill("Count from one to five.")
    page.get_by_test_id("chat-send").click()
    answer = page.locator("[data-testid=chat-message][data-role=assistant]").last
    expect(answer).not_to_be_empty()
    expect(page.get_by_test_id("chat-node")).to_contain_text(seed.node_id[:8])


def test_a_filtered_history_exports_as_csv_and_json(dashboard: Watched, mesh: Cluster) -> None:
    page = dashboard.page
    seed = mesh.nodes[0]
    for _ in range(2):  # something to find: chat requests for the model
        seed_chat(seed)
    go(page, "requests")
    page.get_by_test_id("history-model").fill(MODEL)
    page.get_by_test_id("history-apply").click()
    rows = page.get_by_test_id("history-row")
    expect(rows.first).to_be_visible()
    rows.first.click()
    detail = page.get_by_test_id("history-detail")
    expect(detail).to_contain_text(MODEL)
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()

    with page.expect_download() as csv_download:
        page.get_by_test_id("export-csv").click()
    text = Path(csv_download.value.path()).read_text()
    table = list(csv.DictReader(io.StringIO(text)))
    assert table and {row["model"] for row in table} == {MODEL}
    with page.expect_download() as json_download:
        page.get_by_test_id("export-json").click()
    assert Path(json_download.value.path()).read_text().lstrip().startswith(("[", "{"))


def test_the_live_tail_shows_a_request_as_it_is_answered(dashboard: Watched, mesh: Cluster) -> None:
    page = dashboard.page
    go(page, "requests")
    page.get_by_test_id("history-live").click()
    before = page.get_by_test_id("history-row").count()
    seed_chat(mesh.nodes[0])
    expect(page.get_by_test_id("history-row")).to_have_count(before + 1)


def test_usage_draws_its_chart(dashboard: Watched, mesh: Cluster) -> None:
    page = dashboard.page
    seed_chat(mesh.nodes[0])
    go(page, "usage")
    expect(page.get_by_test_id("usage-chart")).to_be_visible()
    expect(page.get_by_test_id("usage-table")).to_contain_text(MODEL)


@pytest.mark.parametrize("scheme", ["dark", "light"])
@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_fits_its_width_in_both_themes(
    browser: Browser, mesh: Cluster, scheme: str, width: int
) -> None:
    watched = open_dashboard(browser, mesh.nodes[0], scheme=scheme, width=width)
    page = watched.page
    try:
        assert page.evaluate("document.documentElement.dataset.theme") == scheme
        for name in PAGES:
            page.goto(page.url.split("#")[0] + f"#/{name}")
            expect(page.locator(f"[data-page={name}]:not(a)")).to_be_visible()
            scroll = page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= width + 1, f"{name} is {scroll} px wide at {width}"
        watched.check()
    finally:
        page.context.close()


def test_keys_are_created_once_shown_and_revoked(dashboard: Watched, mesh: Cluster) -> None:
    """Last: once the mesh has a key, inference needs one."""
    page = dashboard.page
    go(page, "keys")
    page.get_by_test_id("key-name").fill("from-the-page")
    page.get_by_test_id("key-scope").select_option("inference")
    page.get_by_test_id("key-create").click()
    secret = page.get_by_test_id("key-secret")
    expect(secret).to_contain_text("mk-")
    row = page.locator("[data-testid=key-row]", has_text="from-the-page")
    expect(row).to_be_visible()
    key_id = row.get_attribute("data-key-id")
    assert key_id and key_id in secret.inner_text()
    row.get_by_test_id("key-revoke").click()
    page.get_by_test_id("confirm-ok").click()
    expect(row.filter(has_not_text="revoked")).to_have_count(0)  # marked revoked, or gone


def test_a_page_from_another_origin_cannot_use_the_api(browser: Browser, mesh: Cluster) -> None:
    """The node's own page may call it; one served from anywhere else may not (its
    Origin is refused), even with the admin token in hand."""
    seed = mesh.nodes[0]
    token = (seed.state_dir / "admin_token").read_text().strip()
    context = browser.new_context()
    page = context.new_page()
    try:
        page.route(
            "http://evil.test/",
            lambda route: route.fulfill(
                body="<html><body>hi</body></html>", content_type="text/html"
            ),
        )
        page.goto("http://evil.test/")
        status = page.evaluate(
            """async ([url, token]) => {
                try {
                    const r = await fetch(url, {method: "POST", headers: {
                        "Content-Type": "application/json", "Authorization": "Bearer " + token},
                        body: JSON.stringify({model: "x"})});
                    return r.status;
                } catch (e) { return "blocked"; }
            }""",
            [f"http://127.0.0.1:{seed.http_port}/api/drop", token],
        )
        assert status == "blocked"  # the preflight got 403: the browser never sent it
        assert seed.alive() and MODEL in [m for m in serving(seed)]
    finally:
        context.close()


def seed_chat(node: NodeProcess) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    req = urllib.request.Request(
        node.url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def serving(node: NodeProcess) -> list[str]:
    return [m for m, state in node.status()["serving"].items() if state == "ready"]
