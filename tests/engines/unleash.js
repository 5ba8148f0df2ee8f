// An Unleash server for the tests: its database, port and API tokens from the environment.
const unleash = require('unleash-server');

unleash
  .start({
    db: {
      host: '127.0.0.1',
      port: Number(process.env.PGPORT),
      user: 'postgres',
      password: '',
      database: 'unleash',
      ssl: false,
    },
    server: { port: Number(process.env.PORT) },
    authentication: {
      initApiTokens: [
        { environment: '*', project: '*', secret: process.env.ADMIN_TOKEN, type: 'admin', tokenName: 'admin' },
        { environment: 'development', project: 'default', secret: process.env.CLIENT_TOKEN, type: 'client', tokenName: 'client' },
      ],
    },
    logLevel: 'warn',
  })
  .then(() => console.log('unleash ready'));
