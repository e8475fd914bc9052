"""pls_perception: Proportional Layer Skipping + DVFS for CNN inference under a latency budget."""
