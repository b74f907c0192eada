// kafkajs against Strata: every admin call kafkajs has for issue 6, a consumer-group
// flow with commits, an idempotent producer, and gzip/snappy round trips.
// Prints one "RESULT {json}" line; driven by tests/integration/test_kafkajs_semantics.py.
const { Kafka, logLevel, CompressionTypes, CompressionCodecs } = require('kafkajs')
const SnappyCodec = require('kafkajs-snappy')

CompressionCodecs[CompressionTypes.Snappy] = SnappyCodec

const broker = process.argv[2]
const suffix = Date.now().toString(36)
const kafka = new Kafka({ clientId: 'strata-semantics', brokers: [broker], logLevel: logLevel.ERROR })
const result = {}

async function consumeAll (groupId, topic, n) {
  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500 })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const got = []
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${got.length} of ${n} consumed`)), 60000)
    consumer.run({
      autoCommit: false,
      eachMessage: async ({ partition, message }) => {
        got.push({
          partition,
          offset: message.offset,
          key: message.key && message.key.toString(),
          value: message.value && message.value.toString(),
          headers: Object.fromEntries(Object.entries(message.headers || {}).map(([k, v]) => [k, v && v.toString()]))
        })
        await consumer.commitOffsets([{ topic, partition, offset: (BigInt(message.offset) + 1n).toString() }])
        if (got.length >= n) { clearTimeout(timer); resolve() }
      }
    }).catch(reject)
  })
  await consumer.disconnect()
  return got
}

async function main () {
  const admin = kafka.admin()
  await admin.connect()
  const topic = `js-sem-${suffix}`
  await admin.createTopics({ topics: [{ topic, numPartitions: 2 }], waitForLeaders: true })

  // CreatePartitions
  await admin.createPartitions({ topicPartitions: [{ topic, count: 4 }] })
  const md = await admin.fetchTopicMetadata({ topics: [topic] })
  result.partitions = md.topics[0].partitions.length
  try {
    await admin.createPartitions({ topicPartitions: [{ topic, count: 2 }] })
    result.shrink = 'accepted'
  } catch (e) { result.shrink = e.type }

  // AlterConfigs and DescribeConfigs (kafkajs uses the legacy, replacing AlterConfigs)
  await admin.alterConfigs({
    validateOnly: false,
    resources: [{ type: 2, name: topic, configEntries: [{ name: 'retention.ms', value: '3600000' }] }]
  })
  const described = await admin.describeConfigs({
    includeSynonyms: false, resources: [{ type: 2, name: topic, configNames: ['retention.ms'] }]
  })
  result.retention = described.resources[0].configEntries[0].configValue
  try {
    await admin.alterConfigs({
      validateOnly: false,
      resources: [{ type: 2, name: topic, configEntries: [{ name: 'retention.ms', value: 'forever' }] }]
    })
    result.badConfig = 'accepted'
  } catch (e) { result.badConfig = e.type || String(e) }

  // DescribeCluster is not in kafkajs; describeCluster uses Metadata.
  const cluster = await admin.describeCluster()
  result.brokers = cluster.brokers.length

  // Idempotent producer, gzip and snappy
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  const messages = []
  for (let i = 0; i < 30; i++) {
    messages.push({ key: `k${i}`, value: `v${i}`, partition: i % 4, headers: { h: `${i}` } })
  }
  await producer.send({ topic, messages: messages.slice(0, 10) })
  await producer.send({ topic, compression: CompressionTypes.GZIP, messages: messages.slice(10, 20) })
  await producer.send({ topic, compression: CompressionTypes.Snappy, messages: messages.slice(20, 30) })
  await producer.send({ topic, messages: [{ key: null, value: null, partition: 0 }] })
  await producer.disconnect()

  // Group flow with commits
  const groupId = `js-group-${suffix}`
  const got = await consumeAll(groupId, topic, 31)
  result.consumed = got.length
  result.values = got.filter(m => m.value !== null).map(m => m.value).sort()
  result.nulls = got.filter(m => m.value === null && m.key === null).length
  result.headersOk = got.filter(m => m.value !== null).every(m => m.headers.h === m.value.slice(1))
  const offsets = await admin.fetchOffsets({ groupId, topics: [topic] })
  result.committed = offsets[0].partitions.reduce((s, p) => s + Number(p.offset), 0)

  // Reset the group to the earliest offset, then re-consume everything.
  await admin.resetOffsets({ groupId, topic, earliest: true })
  result.reconsumed = (await consumeAll(groupId, topic, 31)).length

  // ListGroups, DescribeGroups, DeleteGroups
  result.listed = (await admin.listGroups()).groups.some(g => g.groupId === groupId)
  const dg = await admin.describeGroups([groupId])
  result.groupState = dg.groups[0].state

  // DeleteRecords
  await admin.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: '2' }] })
  const lows = await admin.fetchTopicOffsets(topic)
  result.low0 = lows.find(p => p.partition === 0).low

  await admin.deleteGroups([groupId])
  result.afterDelete = (await admin.listGroups()).groups.some(g => g.groupId === groupId)
  try {
    await admin.deleteGroups([groupId])
    result.deleteAgain = 'accepted'
  } catch (e) {
    result.deleteAgain = (e.groups && e.groups[0] && e.groups[0].error && e.groups[0].error.type) || e.type || String(e)
  }
  await admin.deleteTopics({ topics: [topic] })
  await admin.disconnect()
  console.log('RESULT ' + JSON.stringify(result))
}

main().catch(e => { console.error(e); process.exit(1) })
