/**
 * jupyterlab-gpu-meter: the frontend plugins of jupyter_gpu_meter's
 * JupyterLab extension.
 *
 * - `jupyterlab-gpu-meter:status` (status.ts): GPU, price, running cost and
 *   stop warnings of this server in the status bar.
 * - `jupyterlab-gpu-meter:templates` (templates.ts): starter projects in the
 *   launcher.
 */
import { JupyterFrontEndPlugin } from '@jupyterlab/application';

import statusPlugin from './status';
import templatesPlugin from './templates';

const plugins: JupyterFrontEndPlugin<unknown>[] = [statusPlugin, templatesPlugin];

export default plugins;
