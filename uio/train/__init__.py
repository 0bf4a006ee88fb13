"""Training the memory model: objectives, reservoir TBPTT, the loop."""
