"""Policy: the policy file, its rules, signature verification and the base-image library."""
