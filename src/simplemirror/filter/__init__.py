"""Partial mirrors: which projects and which files the mirror holds (the ``[filters]`` table).

``rules`` reads the table into a ``Filters`` value; ``tags`` knows platform tags and the
environments they stand for; ``select`` decides, for one project page, what is kept, what
is left out and why, and what waits out the cooldown. All of it is pure: no network, no
disk (a requirements file is read once, where the configuration is loaded).
"""
