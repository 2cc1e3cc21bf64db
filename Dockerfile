# maitre's image: Node 24 runs the TypeScript sources directly (type stripping), so the image
# holds production dependencies and src/ only. Build: docker build -t maitre .
FROM node:24-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# --omit=dev leaves out the pinned `node` package: the base image is Node 24 already.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:24-slim
ENV NODE_ENV=production
# jemalloc as the router's allocator: under glibc's malloc a long-running router's RSS keeps
# creeping (86–125 MB an hour in the soaks, its live heap flat), under jemalloc it stays flat
# (bench/RESULTS.md, "Soak"). A link with a fixed name keeps LD_PRELOAD independent of the arch.
# tini as PID 1: with the local backend each instance's watchdog is reparented to PID 1 when the
# instance ends, and Node, as PID 1, would never reap it (a zombie per instance, up to the
# container's pid limit); tini reaps them and hands signals on to the router.
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 tini && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(find /usr/lib -name libjemalloc.so.2 | head -n 1)" /usr/local/lib/libjemalloc.so.2
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY src ./src
COPY schema ./schema
COPY config ./config
# Node's compile cache, filled at build time by the user the router runs as (Node keeps one
# directory per user): a start then strips no types and compiles nothing it ran here (~0.45 s of
# CPU, ~25 MB of RSS less: bench/RESULTS.md), read-only root filesystem or not.
ENV NODE_COMPILE_CACHE=/app/.node-compile-cache
RUN mkdir /app/.node-compile-cache && chown 10001:10001 /app/.node-compile-cache
# A numeric non-root user, so runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001
RUN node src/main.ts --version && node --input-type=module -e "await import('/app/src/cluster/etcd/connect.ts')"
EXPOSE 9091
# V8 sizes the young generation from the machine's memory (up to 64 MB semi-spaces); 16 MB ones
# keep the router's RSS ~75-100 MB lower under load at the same throughput (bench/RESULTS.md).
ENTRYPOINT ["/usr/bin/tini", "--", "node", "--max-semi-space-size=16", "src/main.ts"]
CMD ["serve", "--config", "/etc/maitre/maitre.yaml"]
