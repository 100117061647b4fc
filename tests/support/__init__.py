"""Test fixtures: in-memory distributions, a fake upstream index and a static file server.

Everything here binds to 127.0.0.1 only and uses nothing but the standard library, so the
integration tests never touch the network beyond the loopback interface.
"""
