"""Mutation checks: scripts that mutate a module and prove the tests notice."""
