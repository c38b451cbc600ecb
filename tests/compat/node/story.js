// The official Cronofy Node SDK, unchanged except for its base URL, through the same story as
// tests/compat/test_pycronofy.py. Reads its configuration as JSON from the CALBROKER_STORY
// environment variable, prints one JSON document of what it saw, and exits non-zero on any error.
'use strict';

const http = require('http');
const Cronofy = require('cronofy');

const config = JSON.parse(process.env.CALBROKER_STORY);

function sdk(options) {
  const client = new Cronofy({ client_id: config.client_id, client_secret: config.client_secret, ...options });
  client.urls.api = config.base_url; // the one change a migrating application makes
  return client;
}

// The application's callback endpoint: resolves with the first POST body it receives.
function receiver() {
  let deliver;
  const received = new Promise((resolve) => { deliver = resolve; });
  const server = http.createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => { body += chunk; });
    request.on('end', () => {
      response.writeHead(202);
      response.end();
      deliver(JSON.parse(body));
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({ url: `http://127.0.0.1:${server.address().port}/callback`, received, close: () => server.close() });
    });
  });
}

// A push-notification endpoint: every POST (parsed body, raw body, headers); next(type) resolves with the
// first not yet taken of that notification type.
function notifications() {
  const arrived = [];
  const waiting = [];
  const settle = () => {
    for (const wait of [...waiting]) {
      const index = arrived.findIndex((n) => n.json.notification.type === wait.type);
      if (index >= 0) {
        waiting.splice(waiting.indexOf(wait), 1);
        wait.resolve(arrived.splice(index, 1)[0]);
      }
    }
  };
  const server = http.createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => { body += chunk; });
    request.on('end', () => {
      response.writeHead(200);
      response.end();
      arrived.push({ body, json: JSON.parse(body), headers: request.headers });
      settle();
    });
  });
  const next = (type) => new Promise((resolve) => { waiting.push({ type, resolve }); settle(); });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({ url: `http://127.0.0.1:${server.address().port}/push`, next, close: () => server.close() });
    });
  });
}

async function authorize(tenant, email) {
  const callback = await receiver();
  try {
    const admin = sdk({ access_token: config.service_account_tokens[tenant] });
    await admin.authorizeWithServiceAccount({ email, scope: 'read_write', callback_url: callback.url, state: tenant });
    const { authorization } = await callback.received;
    if (authorization.state !== tenant || !authorization.code) {
      throw new Error(`unexpected callback ${JSON.stringify(authorization)}`);
    }
    const user = sdk({});
    const token = await user.requestAccessToken({ code: authorization.code, redirect_uri: callback.url });
    const { calendars } = await user.listCalendars();
    return { user, sub: token.sub, token, calendar: calendars[0] };
  } finally {
    callback.close();
  }
}

async function allPages(read, options, key) {
  const found = [];
  let page = await read(options);
  const pages = [page.pages];
  found.push(...page[key]);
  while (page.pages.next_page) {
    page = await read({ next_page: page.pages.next_page });
    pages.push(page.pages);
    found.push(...page[key]);
  }
  return { found, pages };
}

async function main() {
  const adele = await authorize('contoso', config.graph_mailbox);
  const anna = await authorize('fabrikam', config.ews_mailbox);
  const result = {
    subs: [adele.sub, anna.sub],
    providers: [adele.calendar.provider_name, anna.calendar.provider_name],
    linking_profiles: [adele.token.linking_profile, anna.token.linking_profile],
  };
  const freeBusy = {};
  for (const [name, who] of [['graph', adele], ['ews', anna]]) {
    const read = (options) => who.user.freeBusy(options);
    freeBusy[name] = (await allPages(read, { tzid: 'Etc/UTC', from: config.week_from, to: config.week_to }, 'free_busy')).found;
  }
  result.free_busy = freeBusy;
  result.availability = await adele.user.availability({
    participants: [{ members: [{ sub: adele.sub }, { sub: anna.sub }], required: 'all' }],
    required_duration: { minutes: 30 },
    start_interval: { minutes: 30 },
    query_periods: [{ start: config.future_from, end: config.future_to }],
    response_format: 'overlapping_slots',
    max_results: 20,
  });
  const event = {
    calendar_id: adele.calendar.calendar_id,
    event_id: 'node-intro-1',
    summary: 'Intro call (Node)',
    start: config.event_start,
    end: config.event_end,
    tzid: 'Europe/London',
    conferencing: { profile_id: 'default' },
  };
  await adele.user.createEvent(event);
  const window = { tzid: 'Etc/UTC', from: config.event_day, to: config.event_next_day, only_managed: true };
  result.booked = (await adele.user.readEvents(window)).events;
  await adele.user.createEvent({ ...event, start: config.moved_start, end: config.moved_end });
  result.moved = (await adele.user.readEvents(window)).events;
  await adele.user.deleteEvent({ calendar_id: adele.calendar.calendar_id, event_id: 'node-intro-1' });
  result.deleted = (await adele.user.readEvents(window)).events;
  const read = (options) => adele.user.readEvents(options);
  const everything = await allPages(read, { tzid: 'Etc/UTC', from: config.page_from, to: config.page_to, include_managed: true }, 'events');
  result.paged = { count: everything.found.length, pages: everything.pages, uids: everything.found.map((e) => e.event_uid) };
  try {
    await adele.user.createEvent({ ...event, event_id: 'node-bad', start: 'not a time' });
    result.invalid = null;
  } catch (error) {
    result.invalid = { status: error.statusCode, body: error.error.entity };
  }
  result.push = await push(adele);
  process.stdout.write(JSON.stringify(result));
}

// A push channel: signed notifications (hmacValid), then the change read back with last_modified.
async function push(adele) {
  const hooks = await notifications();
  try {
    const calendarId = adele.calendar.calendar_id;
    const { channel } = await adele.user.createNotificationChannel({
      callback_url: hooks.url,
      filters: { calendar_ids: [calendarId] },
    });
    const verification = await hooks.next('verification');
    await adele.user.createEvent({
      calendar_id: calendarId,
      event_id: 'node-push-1',
      summary: 'Pushed (Node)',
      start: config.push_start,
      end: config.push_end,
    });
    const change = await hooks.next('change');
    const since = change.json.notification.changes_since;
    const window = { tzid: 'Etc/UTC', from: config.event_day, to: config.event_next_day, include_managed: true };
    const changed = (await adele.user.readEvents({ ...window, last_modified: since })).events;
    const listed = (await adele.user.listNotificationChannels()).channels;
    await adele.user.deleteNotificationChannel({ channel_id: channel.channel_id });
    const remaining = (await adele.user.listNotificationChannels()).channels;
    await adele.user.deleteEvent({ calendar_id: calendarId, event_id: 'node-push-1' });
    const valid = (n, secret) => adele.user.hmacValid({
      hmac: n.headers['cronofy-hmac-sha256'], body: n.body, client_secret: secret || config.client_secret,
    });
    return {
      channel,
      verification: verification.json,
      change: change.json,
      valid: [valid(verification), valid(change)],
      forged: valid(change, 'cbs_not_the_secret'),
      changed,
      listed,
      remaining,
    };
  } finally {
    hooks.close();
  }
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n${JSON.stringify(error.error || {})}\n`);
  process.exit(1);
});
