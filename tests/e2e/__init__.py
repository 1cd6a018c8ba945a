"""Helpers for end-to-end tests in a real browser: the FiftyOne App server and Chromium."""
