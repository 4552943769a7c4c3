"""The node tier: a package, so its fixtures (scope "package") stop the node as soon as the
tier's last test is done instead of at the end of the whole session."""
