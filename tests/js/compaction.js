// kafkajs around object compaction (driven by tests/integration/test_compaction.py).
//   node compaction.js BROKER produce TOPIC PARTITIONS N   creates TOPIC, sends N records with an
//        idempotent producer (record i to partition i % PARTITIONS, key, headers, timestamp)
//   node compaction.js BROKER consume TOPIC PARTITIONS N   reads N records from the beginning with
//        a fresh consumer group
// Prints one "RESULT {json}" line: {count, records: [{partition, offset, key, value, headers, timestamp}]}
// (records of a partition in delivery order; offsets as strings).
const { Kafka, logLevel } = require('kafkajs')

const [broker, mode, topic, partitionsArg, countArg] = process.argv.slice(2)
const partitions = Number(partitionsArg)
const count = Number(countArg)
const kafka = new Kafka({ clientId: 'strata-compaction', brokers: [broker], logLevel: logLevel.ERROR })

function valueOf (i) {
  // 100..1100 bytes, deterministic
  return `v-${i}-` + 'abcdefghijklmnopqrstuvwxyz'.repeat(40).slice(0, 100 + (i * 53) % 1000)
}

async function produce () {
  const admin = kafka.admin()
  await admin.connect()
  // The records carry 2023 timestamps: keep them (the default retention is 7 days).
  await admin.createTopics({
    topics: [{ topic, numPartitions: partitions, configEntries: [{ name: 'retention.ms', value: '-1' }] }],
    waitForLeaders: true
  })
  await admin.disconnect()
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  const records = []
  const batch = 100
  for (let start = 0; start < count; start += batch) {
    const msgs = []
    for (let i = start; i < Math.min(count, start + batch); i++) {
      msgs.push({
        partition: i % partitions,
        key: `k-${i % 97}`,
        value: valueOf(i),
        headers: { seq: String(i), origin: 'kafkajs' },
        timestamp: String(1700000000000 + i)
      })
    }
    const meta = await producer.send({ topic, acks: -1, messages: msgs })
    for (const m of meta) {
      if (m.errorCode !== 0) throw new Error(`produce error ${m.errorCode} on partition ${m.partition}`)
      // the messages of one partition keep their order inside the request
      const mine = msgs.filter(x => x.partition === m.partition)
      mine.forEach((x, j) => records.push({
        partition: m.partition,
        offset: (BigInt(m.baseOffset) + BigInt(j)).toString(),
        key: x.key,
        value: x.value,
        headers: x.headers,
        timestamp: x.timestamp
      }))
    }
  }
  await producer.disconnect()
  return records
}

async function consume () {
  const consumer = kafka.consumer({ groupId: `compaction-${Date.now()}`, sessionTimeout: 10000, heartbeatInterval: 500 })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const records = []
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${records.length} of ${count} consumed`)), 90000)
    consumer.run({
      autoCommit: false,
      eachMessage: async ({ partition, message }) => {
        records.push({
          partition,
          offset: message.offset,
          key: message.key && message.key.toString(),
          value: message.value && message.value.toString(),
          headers: Object.fromEntries(Object.entries(message.headers || {}).map(([k, v]) => [k, v && v.toString()])),
          timestamp: message.timestamp
        })
        if (records.length >= count) { clearTimeout(timer); resolve() }
      }
    }).catch(reject)
  })
  // anything beyond `count` would be a duplicate or a stray record: give it a moment to show up
  await new Promise(resolve => setTimeout(resolve, 1000))
  await consumer.disconnect()
  return records
}

async function main () {
  let records
  if (mode === 'produce') records = await produce()
  else if (mode === 'consume') records = await consume()
  else throw new Error(`unknown mode ${mode}`)
  // a large line to a pipe is written asynchronously: exit only once it is flushed
  await new Promise(resolve => process.stdout.write('RESULT ' + JSON.stringify({ count: records.length, records }) + '\n', resolve))
}

main().then(() => process.exit(0), e => { console.error(e); process.exit(1) })
