"""The console's widgets, one a file; none of them touches the network."""

from meshllm.console.widgets.add_endpoint import AddEndpoint
from meshllm.console.widgets.chat_message import ChatMessage
from meshllm.console.widgets.chat_pane import ChatPane
from meshllm.console.widgets.confirm_drop import ConfirmDrop
from meshllm.console.widgets.confirm_remove_endpoint import ConfirmRemoveEndpoint
from meshllm.console.widgets.endpoint_detail import EndpointDetail
from meshllm.console.widgets.endpoints_table import EndpointsTable
from meshllm.console.widgets.failure_detail import FailureDetail
from meshllm.console.widgets.fleet_summary import FleetSummary
from meshllm.console.widgets.header_bar import HeaderBar
from meshllm.console.widgets.idle_notice import IdleNotice
from meshllm.console.widgets.live_table import LiveTable
from meshllm.console.widgets.models_table import ModelsTable
from meshllm.console.widgets.node_down_banner import NodeDownBanner
from meshllm.console.widgets.node_resources import NodeResources
from meshllm.console.widgets.nodes_table import NodesTable

__all__ = [
    "AddEndpoint",
    "ChatMessage",
    "ChatPane",
    "ConfirmDrop",
    "ConfirmRemoveEndpoint",
    "EndpointDetail",
    "EndpointsTable",
    "FailureDetail",
    "FleetSummary",
    "HeaderBar",
    "IdleNotice",
    "LiveTable",
    "ModelsTable",
    "NodeDownBanner",
    "NodeResources",
    "NodesTable",
]
