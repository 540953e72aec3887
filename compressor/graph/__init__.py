"""The working graph: capture any model as one clean fx graph, find its prunable groups."""
