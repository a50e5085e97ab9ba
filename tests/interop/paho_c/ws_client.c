/*
 * A client on Eclipse Paho C (the synchronous MQTTClient API of libpaho-mqtt3cs), for
 * test_websockets.py: over ws:// or wss:// it makes the broker send packets back to back,
 * which Paho C reads only when the socket turns readable again:
 *
 *   1. PUBLISH a retained message at QoS 1      -> PUBACK
 *   2. SUBSCRIBE to PREFIX/# at QoS 2           -> SUBACK + the retained PUBLISH
 *   3. PUBLISH at QoS 1                         -> PUBACK + its delivery
 *   4. PUBLISH at QoS 2                         -> PUBREC, then PUBCOMP + its delivery (QoS 2)
 *
 * It exits 0 only when every acknowledgement and every message arrived, each within
 * STEP_MS; otherwise it says which step stalled and exits 1 (2 for bad arguments or a
 * refused connection).
 *
 *   ws_client URI TOPIC_PREFIX [CAFILE]
 *
 * Written for Makelaar's tests; compiled by the test with `gcc ... -lpaho-mqtt3cs`.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <MQTTClient.h>

#define STEP_MS 5000
#define WHOLE_RUN_S 60

static void fail(const char *step, int rc)
{
    fprintf(stderr, "paho-c ws_client: %s did not complete within %d ms (rc %d)\n",
            step, STEP_MS, rc);
    exit(1);
}

/* Publishes and waits for the whole QoS 1 or 2 exchange. */
static void publish(MQTTClient c, const char *topic, const char *payload, int qos, int retained,
                    const char *step)
{
    MQTTClient_message m = MQTTClient_message_initializer;
    MQTTClient_deliveryToken token;
    m.payload = (void *)payload;
    m.payloadlen = (int)strlen(payload);
    m.qos = qos;
    m.retained = retained;
    int rc = MQTTClient_publishMessage(c, topic, &m, &token);
    if (rc != MQTTCLIENT_SUCCESS)
        fail(step, rc);
    rc = MQTTClient_waitForCompletion(c, token, STEP_MS);
    if (rc != MQTTCLIENT_SUCCESS)
        fail(step, rc);
}

/* Waits for the delivery of `payload` on `topic` at `qos`. */
static void expect(MQTTClient c, const char *topic, const char *payload, int qos, int retained,
                   const char *step)
{
    char *got_topic = NULL;
    int topic_len = 0;
    MQTTClient_message *m = NULL;
    int rc = MQTTClient_receive(c, &got_topic, &topic_len, &m, STEP_MS);
    if (rc != MQTTCLIENT_SUCCESS && rc != MQTTCLIENT_TOPICNAME_TRUNCATED)
        fail(step, rc);
    if (m == NULL)
        fail(step, -100);
    int ok = strcmp(got_topic, topic) == 0 && m->payloadlen == (int)strlen(payload) &&
             memcmp(m->payload, payload, (size_t)m->payloadlen) == 0 && m->qos == qos &&
             m->retained == retained;
    if (!ok) {
        fprintf(stderr,
                "paho-c ws_client: %s: got \"%.*s\" on %s at QoS %d (retained %d), wanted "
                "\"%s\" on %s at QoS %d (retained %d)\n",
                step, m->payloadlen, (char *)m->payload, got_topic, m->qos, m->retained,
                payload, topic, qos, retained);
        exit(1);
    }
    MQTTClient_freeMessage(&m);
    MQTTClient_free(got_topic);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s URI TOPIC_PREFIX [CAFILE]\n", argv[0]);
        return 2;
    }
    const char *uri = argv[1], *prefix = argv[2], *cafile = argc > 3 ? argv[3] : NULL;
    /* Whatever blocks longer than the steps' limits allow ends the run. */
    alarm(WHOLE_RUN_S);

    char id[64], filter[256], retained[256], q1[256], q2[256];
    snprintf(id, sizeof id, "paho-c-%ld", (long)getpid());
    snprintf(filter, sizeof filter, "%s/#", prefix);
    snprintf(retained, sizeof retained, "%s/retained", prefix);
    snprintf(q1, sizeof q1, "%s/q1", prefix);
    snprintf(q2, sizeof q2, "%s/q2", prefix);

    MQTTClient c;
    int rc = MQTTClient_create(&c, uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL);
    if (rc != MQTTCLIENT_SUCCESS) {
        fprintf(stderr, "paho-c ws_client: cannot create a client for %s (rc %d)\n", uri, rc);
        return 2;
    }
    MQTTClient_connectOptions opts = MQTTClient_connectOptions_initializer;
    MQTTClient_SSLOptions ssl = MQTTClient_SSLOptions_initializer;
    opts.keepAliveInterval = 60;
    opts.cleansession = 1;
    opts.connectTimeout = STEP_MS / 1000;
    if (cafile != NULL) {
        ssl.trustStore = cafile;
        ssl.enableServerCertAuth = 1;
        opts.ssl = &ssl;
    }
    rc = MQTTClient_connect(c, &opts);
    if (rc != MQTTCLIENT_SUCCESS) {
        fprintf(stderr, "paho-c ws_client: cannot connect to %s (rc %d)\n", uri, rc);
        return 2;
    }

    publish(c, retained, "kept", 1, 1, "the retained PUBLISH's PUBACK");
    rc = MQTTClient_subscribe(c, filter, 2);
    if (rc != MQTTCLIENT_SUCCESS)
        fail("the SUBACK", rc);
    expect(c, retained, "kept", 1, 1, "the retained message after the SUBACK");
    publish(c, q1, "one", 1, 0, "the QoS 1 PUBACK");
    expect(c, q1, "one", 1, 0, "the QoS 1 delivery");
    publish(c, q2, "two", 2, 0, "the QoS 2 PUBREC/PUBCOMP");
    expect(c, q2, "two", 2, 0, "the QoS 2 delivery");

    /* Clear the retained message, then leave. */
    publish(c, retained, "", 1, 1, "clearing the retained message");
    expect(c, retained, "", 1, 0, "the delivery clearing the retained message");
    MQTTClient_disconnect(c, 1000);
    MQTTClient_destroy(&c);
    printf("paho-c ws_client: every message and acknowledgement arrived\n");
    return 0;
}
