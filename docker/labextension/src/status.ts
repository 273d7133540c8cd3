/**
 * `jupyterlab-gpu-meter:status`: placeholder (the status item comes next).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterlab-gpu-meter:status',
  description: "This server's GPUs, price, running cost and stop warnings in the status bar.",
  autoStart: true,
  activate: (_app: JupyterFrontEnd): void => {
    // the status item
  }
};

export default plugin;
