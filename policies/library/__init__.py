"""The curated base-image library: declared in the policy file, imported or pushed by ops,
tracked through tag history, and enforced through the lineage of every pushed image.

- `declaration`: the policy file's `library:` section.
- `lineage`: which library image an image is built on (pure functions over layer lists).
- `images`: reading an image's platforms and layers from the stores.
- `history`: what each library tag pointed at, and when; the candidates lineage compares.
- `recording`: what a manifest push records (tag history, lineage) and the lineage fact.
- `importer`: `trustyard library import` from an OCI image layout or a `docker save` tarball.
- `reports`: the library overview, a tag's consumers, the rebuild list.

The `base_image` requirement that reads the lineage fact is `policies.base_image_rule`, with the
other rules above the facts (so this package never imports the rules that read it).
"""
