"""Test doubles. Each module states what real API it stands in for and what it does not reproduce."""
