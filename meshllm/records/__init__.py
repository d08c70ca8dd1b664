"""What a node keeps of the requests it handled: history, usage and cost, metrics."""
