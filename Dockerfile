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
# creeping (about 90 MB an hour in the soak, its live heap flat), under jemalloc it stays flat
# (bench/RESULTS.md, "Soak"). A link with a fixed name keeps LD_PRELOAD independent of the arch.
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(find /usr/lib -name libjemalloc.so.2 | head -n 1)" /usr/local/lib/libjemalloc.so.2
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY src ./src
COPY schema ./schema
COPY config ./config
# A numeric non-root user, so runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001
EXPOSE 9091
# V8 sizes the young generation from the machine's memory (up to 64 MB semi-spaces); 16 MB ones
# keep the router's RSS ~75-100 MB lower under load at the same throughput (bench/RESULTS.md).
ENTRYPOINT ["node", "--max-semi-space-size=16", "src/main.ts"]
CMD ["serve", "--config", "/etc/maitre/maitre.yaml"]
