#!/usr/bin/env node
// The kafkajs "getting started" flow against a Strata broker.
//
//   node tests/js/tutorial.js 127.0.0.1:PORT
//
// Creates topic user-events (3 partitions), produces one keyed JSON event with
// the LegacyPartitioner, consumes it in group notification-service from the
// beginning and checks key/value/partition.  On success prints one line
// `RESULT {json}` and exits 0; any failure or the overall timeout exits non-zero.
'use strict';

const { Kafka, Partitioners, logLevel } = require('kafkajs');
const murmur2 = require('kafkajs/src/producer/partitioners/legacy/murmur2');

const bootstrap = process.argv[2];
if (!bootstrap) {
  console.error('usage: tutorial.js HOST:PORT');
  process.exit(64);
}
const TIMEOUT_MS = Number(process.env.TUTORIAL_TIMEOUT_MS || 90000);
// A cluster test runs the tutorial more than once against one cluster: it may name the
// topic and group, and accept any live broker as partition leader.
const TOPIC = process.env.TUTORIAL_TOPIC || 'user-events';
const GROUP = process.env.TUTORIAL_GROUP || 'notification-service';
const ANY_LEADER = process.env.TUTORIAL_ANY_LEADER === '1';
const KEY = 'user-1';
const VALUE = JSON.stringify({ event: 'signup', userId: 'user-1' });

const timer = setTimeout(() => {
  console.error(`TIMEOUT after ${TIMEOUT_MS} ms`);
  process.exit(3);
}, TIMEOUT_MS);

function check(cond, msg) {
  if (!cond) throw new Error('ASSERTION FAILED: ' + msg);
}

async function main() {
  const kafka = new Kafka({
    clientId: 'my-app',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    retry: { retries: 5 },
  });

  // --- admin: create the topic, check it is listed with 3 partitions ---
  const admin = kafka.admin();
  await admin.connect();
  const created = await admin.createTopics({
    topics: [{ topic: TOPIC, numPartitions: 3 }],
    waitForLeaders: true,
  });
  check(created === true, `createTopics returned ${created}, expected true (fresh broker)`);
  const topics = await admin.listTopics();
  check(topics.includes(TOPIC), `listTopics ${JSON.stringify(topics)} lacks ${TOPIC}`);
  const meta = await admin.fetchTopicMetadata({ topics: [TOPIC] });
  const tmeta = meta.topics.find((t) => t.name === TOPIC);
  check(tmeta, 'fetchTopicMetadata lacks the topic');
  check(tmeta.partitions.length === 3, `expected 3 partitions, got ${tmeta.partitions.length}`);
  const cluster = await admin.describeCluster();
  const brokerIds = cluster.brokers.map((b) => b.nodeId);
  for (const p of tmeta.partitions) {
    if (ANY_LEADER) {
      check(brokerIds.includes(p.leader),
        `partition ${p.partitionId} leader ${p.leader} is not a broker of ${JSON.stringify(brokerIds)}`);
    } else {
      check(p.leader === 1, `partition ${p.partitionId} leader ${p.leader}, expected node 1`);
    }
  }
  await admin.disconnect();

  // --- producer (legacy partitioner: murmur2(key) mod 3) ---
  const expectedPartition = (murmur2(KEY) & 0x7fffffff) % 3;
  const producer = kafka.producer({ createPartitioner: Partitioners.LegacyPartitioner });
  await producer.connect();
  const sent = await producer.send({
    topic: TOPIC,
    messages: [{ key: KEY, value: VALUE }],
  });
  await producer.disconnect();
  check(Array.isArray(sent) && sent.length === 1, `send returned ${JSON.stringify(sent)}`);
  check(sent[0].errorCode === 0, `send errorCode ${sent[0].errorCode}`);
  check(sent[0].partition === expectedPartition,
    `producer used partition ${sent[0].partition}, legacy murmur2 says ${expectedPartition}`);
  check(sent[0].baseOffset === '0', `baseOffset ${sent[0].baseOffset}, expected '0' on a fresh topic`);

  // --- consumer group from the beginning ---
  const consumer = kafka.consumer({ groupId: GROUP });
  await consumer.connect();
  await consumer.subscribe({ topic: TOPIC, fromBeginning: true });
  const received = await new Promise((resolve, reject) => {
    consumer
      .run({
        eachMessage: async ({ topic, partition, message }) => {
          resolve({
            topic,
            partition,
            offset: message.offset,
            key: message.key && message.key.toString(),
            value: message.value && message.value.toString(),
          });
        },
      })
      .catch(reject);
  });
  await consumer.disconnect();

  check(received.topic === TOPIC, `received topic ${received.topic}`);
  check(received.key === KEY, `received key ${received.key}`);
  check(received.value === VALUE, `received value ${received.value}`);
  const parsed = JSON.parse(received.value);
  check(parsed.event === 'signup' && parsed.userId === 'user-1', `payload ${received.value}`);
  check(received.partition === expectedPartition,
    `received on partition ${received.partition}, expected ${expectedPartition}`);
  check(received.offset === '0', `received offset ${received.offset}`);

  console.log('RESULT ' + JSON.stringify({
    partitions: tmeta.partitions.length,
    produced_partition: sent[0].partition,
    expected_partition: expectedPartition,
    received,
  }));
}

main()
  .then(() => {
    clearTimeout(timer);
    process.exit(0);
  })
  .catch((err) => {
    console.error(err && err.stack ? err.stack : err);
    process.exit(1);
  });
