"""The coordinator: aggregation of keep-votes into the global mask, and (later) the service around it."""
