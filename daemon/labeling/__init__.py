"""The self-labeler: self-consistency, self-critique, self-refinement and preference pairs."""
