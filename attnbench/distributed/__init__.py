"""Distributed attention and cluster execution."""
