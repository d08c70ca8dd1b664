"""A line under the Endpoints table: the cursor endpoint's URL, key and last error, or
how to add one, or why the list is not there."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from meshllm.console.client import EndpointInfo


class EndpointDetail(Static):
    """What the table does not show of the endpoint under the cursor."""

    def show_endpoint(self, endpoint: EndpointInfo | None, *, any_endpoint: bool) -> None:
        """Describe `endpoint`; with none at all, say how to add one."""
        if endpoint is None:
            hint = "" if any_endpoint else "No endpoint yet: "
            self.update(
                Text.assemble(
                    (hint, "bold"),
                    ("press ", "grey70"),
                    ("a", "bold"),
                    (" to front an OpenAI-compatible or Ollama server from this node", "grey70"),
                )
            )
            return
        out = Text.assemble((endpoint.url or "no URL given", "bold"))
        out.append(" · ", style="grey50")
        out.append("API key stored" if endpoint.has_api_key else "no API key", style="grey70")
        if endpoint.error and endpoint.state != "up":
            out.append(" · ", style="grey50")
            out.append(f"last error: {endpoint.error}", style="red")
        self.update(out)

    def show_error(self, error: str) -> None:
        """The node would not list its endpoints."""
        self.update(Text.assemble(("Endpoints unavailable: ", "bold red"), (error, "red")))
