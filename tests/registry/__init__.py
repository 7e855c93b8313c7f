"""Tests of the adapter registry (appliance/registry) and its CLI."""
