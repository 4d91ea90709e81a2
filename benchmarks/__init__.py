"""scripts/bench: vgen's figures, each against a baseline run side by side."""
