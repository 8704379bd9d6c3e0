# A Dockerfile with an error hadolint refuses: an instruction it cannot parse. infra/check
# must reject it.
FROM debian:bookworm-slim
RUN echo hi
COPPY tally /usr/local/bin/tally
