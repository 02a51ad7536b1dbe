"""The benchmark: a paced upstream simulator, a load generator over every transport, and its report."""
