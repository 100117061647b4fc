"""Air-gap seeding: signed, chained bundles that rebuild a mirror where no network reaches.

``keys`` (minisign's key and signature formats), ``manifest`` (pure: what a bundle says,
its checks, the state digest, the volume layout), ``export`` (the near side writes a
bundle) and ``apply`` (the far side verifies one and publishes it).
"""
