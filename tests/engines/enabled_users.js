// Which of the given users Unleash's Node SDK puts in a flag: args url, client token, flag,
// number of users; prints a JSON list of the enabled user ids.
const { initialize } = require('unleash-client');

const [url, token, flag, count] = process.argv.slice(2);
const client = initialize({
  url,
  appName: 'shipwatch-tests',
  customHeaders: { Authorization: token },
  refreshInterval: 1000,
  disableMetrics: true,
});
client.on('error', () => {});
client.on('synchronized', () => {
  const users = [];
  for (let n = 0; n < Number(count); n += 1) {
    const id = `user-${n}`;
    if (client.isEnabled(flag, { userId: id })) users.push(id);
  }
  console.log(JSON.stringify(users));
  client.destroy();
});
