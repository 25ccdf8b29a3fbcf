"""The curated base-image library: declared in the policy file, imported or pushed by ops,
tracked through tag history, and enforced through the lineage of every pushed image.

- `declaration`: the policy file's `library:` section.
- `lineage`: which library image an image is built on (pure functions over layer lists).
- `images`: reading an image's platforms and layers from the stores.
- `history`: what each library tag pointed at, and when; the candidates lineage compares.
- `recording`: what a manifest push records (tag history, lineage) and the lineage fact.
- `importer`: `trustyard library import` from an OCI image layout or a `docker save` tarball.
- `rule`: the `base_image` requirement.
- `reports`: the library overview, a tag's consumers, the rebuild list.
"""
