"""Triton kernels and their launch configurations, one module per op."""
