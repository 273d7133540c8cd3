/**
 * `jupyterlab-gpu-meter:status`: this server's GPUs, utilization, memory,
 * cost so far, price per hour, budget left and stop warnings in the status bar.
 *
 * Every few seconds (setting `refreshIntervalSeconds`) it asks this server's
 * `gpu-meter/status` (the server extension, which asks the meter at most once
 * per its cache period however many tabs ask). The meter formats every number
 * and date; this item shows its `*_text` fields verbatim and formats nothing.
 * A hidden tab does not ask.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

const PLUGIN_ID = 'jupyterlab-gpu-meter:status';
const DEFAULT_INTERVAL_SECONDS = 5;

/** A policy's stop ahead, as the meter words it. */
export interface IDeadline {
  policy: string;
  at?: string | null;
  in_seconds?: number | null;
  warn: boolean;
  text: string;
}

/** What `gpu-meter/status` answers: the meter's `api/server-status` plus `available`. */
export interface IServerStatus {
  available: boolean;
  reason?: string;
  running?: boolean;
  image?: string;
  gpus_text?: string;
  utilization_text?: string;
  memory_text?: string;
  cost_so_far_text?: string;
  price_per_hour_text?: string;
  budget?: { left_text?: string } | null;
  deadlines?: IDeadline[];
}

/** One labelled text: `<span class="jp-gpu-meter-field {cls}" title="{label}">{text}</span>`. */
function field(cls: string, text: string, label: string): HTMLElement {
  const span = document.createElement('span');
  span.className = `jp-gpu-meter-field ${cls}`;
  span.textContent = text;
  span.title = label;
  return span;
}

/**
 * The status bar item. Stable hooks for tests and styles: the node is
 * `#jp-gpu-meter-status` with `data-available="true|false"`; its texts are
 * `.jp-gpu-meter-gpus`, `-utilization`, `-memory`, `-cost`, `-price`,
 * `-budget`, each warning `.jp-gpu-meter-warning[data-policy=…]`, and
 * `.jp-gpu-meter-unavailable` when the meter's figures cannot be had.
 */
export class GPUMeterStatusItem extends Widget {
  constructor() {
    super();
    this.id = 'jp-gpu-meter-status';
    this.addClass('jp-gpu-meter-status');
    this.render({ available: false, reason: 'asking the meter…' });
  }

  /** Show `status` (replaces what was shown). */
  render(status: IServerStatus): void {
    const node = this.node;
    node.replaceChildren();
    if (!status.available || status.running === false) {
      const reason = status.available
        ? 'the meter does not see this server running'
        : status.reason || 'no reason given';
      node.dataset.available = 'false';
      node.appendChild(field('jp-gpu-meter-unavailable', 'metering unavailable', reason));
      node.title = `GPU meter: ${reason}`;
      return;
    }
    node.dataset.available = 'true';
    const parts: [string, string | undefined, string][] = [
      ['jp-gpu-meter-gpus', status.gpus_text, 'GPUs of this server'],
      ['jp-gpu-meter-utilization', status.utilization_text, 'GPU utilization'],
      ['jp-gpu-meter-memory', status.memory_text, 'GPU memory used / total'],
      ['jp-gpu-meter-cost', status.cost_so_far_text, 'cost of this server so far'],
      ['jp-gpu-meter-price', status.price_per_hour_text, 'price of this server'],
      ['jp-gpu-meter-budget', status.budget?.left_text, 'budget left']
    ];
    for (const [cls, text, label] of parts) {
      if (text) {
        node.appendChild(field(cls, text, label));
      }
    }
    const deadlines = status.deadlines ?? [];
    for (const deadline of deadlines.filter(d => d.warn)) {
      const warning = field('jp-gpu-meter-warning', deadline.text, `${deadline.policy} policy`);
      warning.dataset.policy = deadline.policy;
      node.appendChild(warning);
    }
    const lines = ['GPU meter'];
    if (status.image) {
      lines.push(`image: ${status.image}`);
    }
    if (status.budget?.left_text) {
      lines.push(`budget left: ${status.budget.left_text}`);
    }
    lines.push(...deadlines.map(d => d.text));
    node.title = lines.join('\n');
  }
}

/** Ask this server's `gpu-meter/status`; a failure is shown as "metering unavailable". */
async function fetchStatus(settings: ServerConnection.ISettings): Promise<IServerStatus> {
  const url = URLExt.join(settings.baseUrl, 'gpu-meter', 'status');
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, {}, settings);
  } catch (error) {
    return { available: false, reason: `cannot reach this server: ${error}` };
  }
  if (!response.ok) {
    return { available: false, reason: `this server answered ${response.status}` };
  }
  try {
    return (await response.json()) as IServerStatus;
  } catch {
    // e.g. the hub's page for a server that is stopped
    return { available: false, reason: "this server's answer is not JSON: is it running?" };
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: "This server's GPUs, price, running cost and stop warnings in the status bar.",
  autoStart: true,
  optional: [IStatusBar, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar | null,
    settingRegistry: ISettingRegistry | null
  ): void => {
    if (!statusBar) {
      return; // no status bar in this frontend: nothing to show
    }
    const item = new GPUMeterStatusItem();
    statusBar.registerStatusItem(PLUGIN_ID, { item, align: 'left', rank: 100 });
    const serverSettings = app.serviceManager.serverSettings;
    const poll = new Poll({
      name: PLUGIN_ID,
      factory: async () => item.render(await fetchStatus(serverSettings)),
      frequency: { interval: DEFAULT_INTERVAL_SECONDS * 1000, backoff: false },
      standby: 'when-hidden'
    });
    if (settingRegistry) {
      const apply = (settings: ISettingRegistry.ISettings): void => {
        const seconds = settings.get('refreshIntervalSeconds').composite as number;
        poll.frequency = { ...poll.frequency, interval: Math.max(1, seconds) * 1000 };
      };
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          apply(settings);
          settings.changed.connect(apply);
        })
        .catch(reason => console.warn(`${PLUGIN_ID}: settings not loaded`, reason));
    }
  }
};

export default plugin;
