"""Real-time analytic tasks: Faust agents that validate, annotate and sink position reports."""
