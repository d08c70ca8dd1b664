"""The web dashboard's files (``static/``: the page, its scripts, styles and icon),
shipped in the package and served by :mod:`meshllm.proxy.dashboard_routes` at ``/``.

Plain ES modules and CSS, no build step: ``static/app.js`` starts the page, which is
built only on the node's HTTP API and ``/api/events``.
"""
