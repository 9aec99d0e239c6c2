"""The policy engine and the default policy files operators edit (built out in the policies issue)."""
