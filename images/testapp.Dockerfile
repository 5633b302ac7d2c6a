# Test app for the cluster tests: one static binary, nothing else.
FROM scratch
COPY outrigger-testapp /outrigger-testapp
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/outrigger-testapp"]
