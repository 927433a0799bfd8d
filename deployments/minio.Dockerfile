# MinIO for the e2e tests and the dev overlay: the pinned, static MinIO
# (DESIGN §8) in an empty image. `make images` stages the context.
FROM scratch
COPY minio /minio
ENTRYPOINT ["/minio"]
