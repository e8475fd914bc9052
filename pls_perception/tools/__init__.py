"""Console tools (pls-eval, pls-profile, pls-plot, pls-solve, pls-demo, pls-bag, pls-plan)."""
