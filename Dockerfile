# podtrail's image for people with Docker (or Podman, or buildah). It holds exactly what
# scripts/image.sh puts in its own archive, which needs no Docker at all; stage that tree first:
#
#   cargo build --release
#   scripts/image.sh --stage target/image/rootfs      (a release to publish: add --dist)
#   docker build -t podtrail:0.1.0 .
#
# tests/image/compare.sh builds this file with buildah and checks that both images hold the
# same files (paths, modes, sizes, contents) and the same entrypoint, user and environment.
FROM scratch
COPY target/image/rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 65532:65532
ENTRYPOINT ["podtrail"]
