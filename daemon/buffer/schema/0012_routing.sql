-- What the public model name routes to (evolvd.serving.routing_table): one row, written by the daemon
-- that swaps adapters on every flip and read by `--role gateway` members, so several stateless
-- gateways behind a load balancer route as that daemon does. `generation` grows by one with every
-- write; 0 means nothing is published yet. On a shared buffer only the member leading the loop
-- publishes, and `fencing_token` is its term's (a leader cut off from the others cannot flip).
CREATE TABLE routing (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    generation    BIGINT NOT NULL,
    base          VARCHAR,
    live          VARCHAR,
    previous      VARCHAR,
    canary        VARCHAR,
    canary_share  DOUBLE NOT NULL DEFAULT 0,
    fencing_token BIGINT,
    updated_at    TIMESTAMPTZ
);
INSERT INTO routing (id, generation) VALUES (1, 0);

-- The outcome of each alias-routed request a gateway member served while a canary ran
-- (evolvd.serving.served_log): the canary's verdict counts every gateway's traffic, not only the
-- traffic of the daemon's own gateway (which keeps its outcomes in memory).
CREATE SEQUENCE served_request_seq;
CREATE TABLE served_requests (
    served_request_id  BIGINT PRIMARY KEY DEFAULT nextval('served_request_seq'),
    gateway            VARCHAR NOT NULL,
    model              VARCHAR NOT NULL,
    served_at          DOUBLE NOT NULL,   -- epoch seconds, as canary windows are compared
    ok                 BOOLEAN NOT NULL,
    seconds            DOUBLE NOT NULL
);
CREATE INDEX served_requests_by_model ON served_requests (model, served_at);
