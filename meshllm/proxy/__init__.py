"""The OpenAI-compatible proxy: routing decision, HTTP-over-stream tunnel, forwarding, routes."""

from meshllm.proxy.app import NodeAPI, create_app
from meshllm.proxy.errors import (
    BackendUnavailable,
    TunnelBroken,
    TunnelUnavailable,
    error_body,
    error_response,
    openai_error_middleware,
    sse_error_event,
)
from meshllm.proxy.forward import (
    ChainedBackends,
    Forwarder,
    HttpBackends,
    LocalBackends,
    ProxiedResponse,
    UpstreamResponse,
)
from meshllm.proxy.limits import ByteBudget, HttpLimits
from meshllm.proxy.routes import (
    MAX_BODY_BYTES,
    MODEL_HEADER,
    NODE_HEADER,
    ProxyMesh,
    add_proxy_routes,
)
from meshllm.proxy.routing import RoutePlan, Target, fallback_model, order_targets, plan_route
from meshllm.proxy.server import start_http
from meshllm.proxy.tunnel import (
    TUNNEL_ROUTES,
    TunnelResponse,
    open_tunnel_request,
    serve_tunnel,
)

__all__ = [
    "MAX_BODY_BYTES",
    "MODEL_HEADER",
    "NODE_HEADER",
    "TUNNEL_ROUTES",
    "BackendUnavailable",
    "ByteBudget",
    "ChainedBackends",
    "Forwarder",
    "HttpBackends",
    "HttpLimits",
    "LocalBackends",
    "NodeAPI",
    "ProxiedResponse",
    "ProxyMesh",
    "RoutePlan",
    "Target",
    "TunnelBroken",
    "TunnelResponse",
    "TunnelUnavailable",
    "UpstreamResponse",
    "add_proxy_routes",
    "create_app",
    "error_body",
    "error_response",
    "fallback_model",
    "open_tunnel_request",
    "openai_error_middleware",
    "order_targets",
    "plan_route",
    "serve_tunnel",
    "sse_error_event",
    "start_http",
]
