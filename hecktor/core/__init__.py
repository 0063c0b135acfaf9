"""The core: what every stage shares and that knows no stage (types, geometry, the manifest schema, the
feature names it validates, the input policy, atomic files, metrics and validation splits).

Nothing here imports from another part of the package.
"""
